'use strict';
/*
 * Preloaded into s3rver (node --require, see tests/world.py's
 * s3rver_argv): make its object writes atomic, as S3's are.
 *
 * s3rver 3.7.1 writes an object's bytes in place (the file is cut to
 * nothing, then streamed into) and its ETag (the .md5 file) only after.
 * A listing, HEAD or GET meanwhile sees the new object's partial size
 * under the old ETag, and a ranged GET with If-Match of the old ETag is
 * answered with the new bytes.  S3 never shows a version half written:
 * a cluster test read a file on one node while another node uploaded
 * its next version, was told the old ETag with the partial size, and
 * served the old version cut short (CI, 2026-12-06).
 *
 * Here each object is written to a temporary file beside the store and
 * renamed over the object; the rename and the ETag's update, and each
 * reader's look at the object (its size, its ETag, opening its bytes),
 * are serialised per object, so a reader sees one version or the other
 * whole.  Nothing of s3rver's answers changes otherwise.
 */
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');
const { Transform } = require('stream');

// Only in s3rver itself (NODE_OPTIONS reaches every node it starts).
const main = process.argv[1] && fs.realpathSync(process.argv[1]);
if (main && main.endsWith(path.join('s3rver', 'bin', 's3rver.js'))) {
  const Store = createRequire(main)('../lib/stores/filesystem');
  const proto = Store.prototype;
  for (const name of ['putObject', 'copyObject', 'deleteObject', 'getMetadata',
    'getObject', 'getResourcePath', 'putMetadata']) {
    if (typeof proto[name] !== 'function') {
      throw new Error(`bucketfs: s3rver's store has no ${name}: cannot make writes atomic`);
    }
  }
  const original = {
    putObject: proto.putObject,
    copyObject: proto.copyObject,
    deleteObject: proto.deleteObject,
    getMetadata: proto.getMetadata,
    getObject: proto.getObject,
  };

  // One chain of promises per object file: fn runs once the one before ended.
  const chains = new Map();
  const locked = (file, fn) => {
    const run = (chains.get(file) || Promise.resolve()).then(fn);
    const tail = run.catch(() => {});
    chains.set(file, tail);
    tail.then(() => {
      if (chains.get(file) === tail) chains.delete(file);
    });
    return run;
  };
  // The store with unlocked look-ups, for calls made inside a lock.
  const unlocked = store =>
    Object.create(store, { getMetadata: { value: original.getMetadata } });

  proto.putObject = async function (object) {
    const file = this.getResourcePath(object.bucket, object.key, 'object');
    // Beside the store's root, on its file system: not in a bucket
    // (listed) nor in the root (a bucket).
    const tmpdir = `${this.rootDirectory.replace(/\/+$/, '')}.atomic`;
    await fs.promises.mkdir(tmpdir, { recursive: true });
    const tmp = path.join(tmpdir, crypto.randomBytes(12).toString('hex'));
    try {
      const [size, md5] = await new Promise((resolve, reject) => {
        const out = fs.createWriteStream(tmp);
        const hash = crypto.createHash('md5');
        let total = 0;
        out.on('error', reject);
        if (Buffer.isBuffer(object.content)) {
          hash.update(object.content);
          out.end(object.content, () =>
            resolve([object.content.length, hash.digest('hex')]));
          return;
        }
        object.content
          .on('error', reject)
          .pipe(new Transform({
            transform(chunk, encoding, callback) {
              hash.update(chunk, encoding);
              total += chunk.length;
              callback(null, chunk);
            },
          }))
          .pipe(out)
          .on('finish', () => resolve([total, hash.digest('hex')]));
      });
      await fs.promises.mkdir(path.dirname(file), { recursive: true });
      return await locked(file, async () => {
        await fs.promises.rename(tmp, file);
        await this.putMetadata(object.bucket, object.key, object.metadata, md5);
        return { size, md5 };
      });
    } finally {
      fs.promises.unlink(tmp).catch(() => {});
    }
  };

  proto.copyObject = function (srcBucket, srcKey, destBucket, destKey, metadata) {
    const file = this.getResourcePath(destBucket, destKey, 'object');
    return locked(file, () => original.copyObject.call(
      unlocked(this), srcBucket, srcKey, destBucket, destKey, metadata));
  };

  proto.deleteObject = function (bucket, key) {
    const file = this.getResourcePath(bucket, key, 'object');
    return locked(file, () => original.deleteObject.call(this, bucket, key));
  };

  proto.getMetadata = function (bucket, key) {
    const file = this.getResourcePath(bucket, key, 'object');
    return locked(file, () => original.getMetadata.call(this, bucket, key));
  };

  // Its size and ETag, and the open of its bytes, in one look.
  proto.getObject = function (bucket, key, options) {
    const file = this.getResourcePath(bucket, key, 'object');
    return locked(file, () => original.getObject.call(unlocked(this), bucket, key, options));
  };
}
