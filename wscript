#!/usr/bin/env python
#
# bucketfs inside a Samba source tree (waf).  See README.md, "Building inside
# Samba's tree": copy this repository to source3/modules/bucketfs, add
#   conf.RECURSE('source3/modules/bucketfs')   to configure() in ./wscript
#   bld.RECURSE('source3/modules/bucketfs')    to ./wscript_build
# then ./configure ... && make (or: buildtools/bin/waf build
# --targets=vfs_bucketfs).  scripts/intree-build.sh does exactly that.

import os

# System libraries bucketfs uses beyond Samba's own.
SYSLIBS = (('curl', 'curl_multi_socket_action', 'curl/curl.h'),
           ('lmdb', 'mdb_env_open', 'lmdb.h'),
           ('expat', 'XML_ParserCreate', 'expat.h'),
           ('crypto', 'EVP_Digest', 'openssl/evp.h'),
           ('isal', 'crc32_iscsi', 'isa-l/crc.h'),
           ('z', 'crc32', 'zlib.h'),
           ('pthread', 'pthread_create', 'pthread.h'))


def options(opt):
    return


def configure(conf):
    for lib, func, header in SYSLIBS:
        conf.CHECK_HEADERS(header)
        if not conf.CHECK_FUNCS_IN(func, lib, headers=header):
            conf.fatal('bucketfs needs lib%s (%s); install its -dev package'
                       % (lib, header))


def build(bld):
    # Every file of lib/, as the Makefile takes them: no list to keep in step.
    libdir = os.path.join(bld.path.abspath(), 'lib')
    lib_sources = ' '.join('lib/' + f for f in sorted(os.listdir(libdir))
                           if f.endswith('.c'))
    bld.SAMBA3_MODULE('vfs_bucketfs',
                      subsystem='vfs',
                      source='modules/vfs_bucketfs.c ' + lib_sources,
                      includes='lib',
                      deps='samba-util talloc tevent ' +
                           ' '.join(lib for lib, _, _ in SYSLIBS),
                      init_function='',
                      internal_module=False,
                      enabled=True)
