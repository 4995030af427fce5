/*
 * A share's credential chain (lib/bfs_creds): anonymous, secrets in
 * smb.conf, the credentials file and its profiles, loose permissions,
 * and the instance role only when no file is named (a stand-in metadata
 * service on loopback, forked; a closed port fails at once).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_tmpdir.h"

#include "bfs_creds.h"
#include "bfs_log.h"

/* The last line lib logged. */
static char last_line[1024];

static void keep_line(int level, const char *line)
{
	(void)level;
	snprintf(last_line, sizeof(last_line), "%s", line);
}

#include "test_creds_files.h"
#include "test_loopback.h"

static const char profiles[] =
	"[default]\n"
	"aws_access_key_id = DEFAULTKEY\n"
	"aws_secret_access_key = defaultsecret\n"
	"[train]\n"
	"aws_access_key_id = TRAINKEY\n"
	"aws_secret_access_key = trainsecret\n"
	"aws_session_token = traintoken\n"
	"[half]\n"
	"aws_access_key_id = ONLYKEY\n";

/* smb.conf as a list of "name", "value" pairs. */
static const char *conf_get(void *priv, const char *name)
{
	const char *const *kv = priv;

	for (; kv[0] != NULL; kv += 2) {
		if (strcmp(kv[0], name) == 0) {
			return kv[1];
		}
	}
	return NULL;
}

static const char *const no_conf[] = {NULL};
static const struct bfs_psrc empty_conf = {conf_get, (void *)no_conf};

/* A share with nothing set but the file, the home and the endpoint. */
static struct bfs_creds_params params(const char *file, const char *home,
				      const char *imds_endpoint)
{
	return (struct bfs_creds_params){
		.service = "s",
		.conf = &empty_conf,
		.file = file,
		.imds = true,
		.imds_endpoint = imds_endpoint,
		.home = home,
	};
}

/* A listening loopback socket (non-blocking) and its URL. */
static int listener(TALLOC_CTX *t, char **url)
{
	struct sockaddr_in a = {.sin_family = AF_INET};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 8), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	*url = talloc_asprintf(t, "http://127.0.0.1:%u", ntohs(a.sin_port));
	return fd;
}

/* Whether anything connected to listener fd. */
static int was_asked(int fd)
{
	int c = accept(fd, NULL, NULL);

	if (c == -1) {
		assert_int_equal(errno, EAGAIN);
		return 0;
	}
	close(c);
	return 1;
}

static void test_anonymous_needs_nothing(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	static const char *const secret[] = {"secret access key", "x", NULL};
	const struct bfs_psrc conf = {conf_get, (void *)secret};
	struct bfs_creds_params p = params("/nonexistent/creds", NULL,
					   "http://127.0.0.1:1");
	struct bfs_creds c;
	const char *why = "unset";

	(void)state;
	p.anonymous = true;
	p.conf = &conf; /* the module never looks: unsigned requests */
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_null(c.source);
	assert_null(c.keys.access_key);
	assert_null(c.keys.secret_key);
	assert_null(c.imds);
	assert_int_equal(c.expire, 0);
	assert_null(why);
	talloc_free(t);
}

static void test_a_secret_in_smb_conf_is_refused(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	static const char *const names[] = {
		"secret access key", "secret key", "secret",
		"aws_secret_access_key", "session token", "aws_session_token",
	};
	const char *dir = test_tmpdir(t, "bfs-creds-test");
	const char *file = write_file(t, dir, "creds", profiles, 0600);
	const char *kv[5] = {"access key", "AKID", NULL, NULL, NULL};
	const struct bfs_psrc conf = {conf_get, (void *)kv};
	struct bfs_creds_params p = params(file, NULL, "http://127.0.0.1:1");
	struct bfs_creds c;
	const char *why = NULL;
	size_t i;

	(void)state;
	clear_env();
	p.conf = &conf;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		kv[2] = names[i];
		kv[3] = "S3RVER";
		assert_int_equal(bfs_creds_get(t, &p, &c, &why), EPERM);
		assert_string_equal(why, talloc_asprintf(t, "'bucketfs:%s' "
			"puts a secret in smb.conf, which every local user "
			"can read: refused; put the keys in a credentials "
			"file (mode 0600) named by 'bucketfs:credentials "
			"file'", names[i]));
		assert_null(c.keys.access_key);
		/* Set but empty: nothing written there. */
		kv[3] = "";
		assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
		assert_string_equal(c.keys.access_key, "DEFAULTKEY");
	}
	talloc_free(t);
}

static void test_a_credentials_file_and_its_profiles(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *dir = test_tmpdir(t, "bfs-creds-test");
	const char *file = write_file(t, dir, "creds", profiles, 0600);
	struct bfs_creds_params p = params(file, NULL, "http://127.0.0.1:1");
	struct bfs_creds c;
	const char *why = NULL;

	(void)state;
	clear_env();
	last_line[0] = '\0';
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_string_equal(c.source, file);
	assert_string_equal(c.keys.access_key, "DEFAULTKEY");
	assert_string_equal(c.keys.secret_key, "defaultsecret");
	assert_null(c.keys.session_token);
	assert_null(c.imds);
	assert_int_equal(c.expire, 0);
	assert_null(why);
	p.profile = "train";
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_string_equal(c.keys.access_key, "TRAINKEY");
	assert_string_equal(c.keys.session_token, "traintoken");
	/* The share's profile first, else AWS_PROFILE. */
	p.profile = "";
	setenv("AWS_PROFILE", "train", 1);
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_string_equal(c.keys.access_key, "TRAINKEY");
	p.profile = "default";
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_string_equal(c.keys.access_key, "DEFAULTKEY");
	unsetenv("AWS_PROFILE");
	/* The share's file wins over the environment. */
	setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_string_equal(c.keys.access_key, "DEFAULTKEY");
	clear_env();
	assert_string_equal(last_line, ""); /* 0600: nothing to say */

	p.profile = "nosuch";
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), ESRCH);
	assert_string_equal(why, talloc_asprintf(t, "profile [nosuch] not "
						 "found in credentials file %s",
						 file));
	p.profile = "half";
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), EINVAL);
	assert_string_equal(why, talloc_asprintf(t, "profile [half] in %s "
						 "lacks aws_access_key_id or "
						 "aws_secret_access_key",
						 file));
	talloc_free(t);
}

static void test_a_loose_file_works_with_a_warning(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *dir = test_tmpdir(t, "bfs-creds-test");
	const char *file = write_file(t, dir, "creds-loose", profiles, 0644);
	struct bfs_creds_params p = params(file, NULL, "http://127.0.0.1:1");
	struct bfs_creds c;
	const char *why = NULL;
	char *home;

	(void)state;
	clear_env();
	last_line[0] = '\0';
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_string_equal(c.keys.access_key, "DEFAULTKEY");
	assert_string_equal(last_line, talloc_asprintf(t, "bucketfs: share s: "
		"credentials file %s can be read by other users: chmod 600 "
		"it", file));
	/* Group-readable is readable by others too. */
	assert_int_equal(chmod(file, 0640), 0);
	last_line[0] = '\0';
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_true(strstr(last_line, "chmod 600 it") != NULL);

	/* The same for ~/.aws/credentials, found without a named file. */
	home = talloc_asprintf(t, "%s/home", dir);
	assert_int_equal(mkdir(home, 0700), 0);
	assert_int_equal(mkdir(talloc_asprintf(t, "%s/.aws", home), 0700), 0);
	write_file(t, home, ".aws/credentials", profiles, 0604);
	p = params(NULL, home, "http://127.0.0.1:1");
	last_line[0] = '\0';
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_string_equal(c.source,
			    talloc_asprintf(t, "%s/.aws/credentials", home));
	assert_true(strstr(last_line, "/.aws/credentials can be read by other "
			   "users") != NULL);

	/* The environment is no file: nothing to warn of. */
	setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	last_line[0] = '\0';
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_string_equal(c.source, "the environment (AWS_ACCESS_KEY_ID)");
	assert_string_equal(c.keys.access_key, "ENVKEY");
	assert_string_equal(last_line, "");
	clear_env();
	talloc_free(t);
}

static void test_an_unreadable_file_is_an_error(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *dir = test_tmpdir(t, "bfs-creds-test");
	char *missing = talloc_asprintf(t, "%s/missing", dir);
	struct bfs_creds_params p = params(missing, NULL, "http://127.0.0.1:1");
	struct bfs_creds c;
	const char *why = NULL, *file;

	(void)state;
	clear_env();
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), ENOENT);
	assert_string_equal(why, talloc_asprintf(t, "cannot open credentials "
						 "file %s: %s", missing,
						 strerror(ENOENT)));
	/* Root reads any file: only another user sees EACCES. */
	if (geteuid() != 0) {
		file = write_file(t, dir, "creds", profiles, 0);
		p.file = file;
		assert_int_equal(bfs_creds_get(t, &p, &c, &why), EACCES);
		assert_string_equal(why, talloc_asprintf(t, "cannot open "
			"credentials file %s: %s", file, strerror(EACCES)));
	}
	talloc_free(t);
}

static void test_home(void **state)
{
	const char *saved = getenv("HOME");
	char *copy = saved ? strdup(saved) : NULL;
	struct passwd *pw;

	(void)state;
	setenv("HOME", "/some/home", 1);
	assert_string_equal(bfs_creds_home(0), "/some/home");
	/* Without $HOME: the password database's, as the AWS tools. */
	unsetenv("HOME");
	pw = getpwuid(0);
	assert_non_null(pw);
	assert_string_equal(bfs_creds_home(0), pw->pw_dir);
	if (getpwuid((uid_t)-2) == NULL) {
		assert_null(bfs_creds_home((uid_t)-2));
	}
	if (copy != NULL) {
		setenv("HOME", copy, 1);
	}
	free(copy);
}

/* Nothing before the metadata service has keys (an empty home). */
static void test_imds_only_when_no_file_is_named(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *dir = test_tmpdir(t, "bfs-creds-test");
	const char *file = write_file(t, dir, "creds", profiles, 0600);
	char *url = NULL, *missing = talloc_asprintf(t, "%s/missing", dir);
	int fd = listener(t, &url);
	struct bfs_creds_params p;
	struct bfs_creds c;
	const char *why = NULL;

	(void)state;
	clear_env();
	/* A named file, good or missing: never the instance role. */
	p = params(file, dir, url);
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_int_equal(was_asked(fd), 0);
	p = params(missing, dir, url);
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), ENOENT);
	assert_true(strncmp(why, "cannot open credentials file", 28) == 0);
	assert_int_equal(was_asked(fd), 0);
	/* 'bucketfs:imds = no': the chain ends with nothing. */
	p = params(NULL, dir, url);
	p.imds = false;
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), ENOENT);
	assert_string_equal(why, "no credentials: none in the share's "
			    "'bucketfs:credentials file', AWS_ACCESS_KEY_ID, "
			    "AWS_SHARED_CREDENTIALS_FILE or "
			    "~/.aws/credentials");
	assert_int_equal(was_asked(fd), 0);
	/* Keys in the environment come first. */
	setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	p.imds = true;
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_int_equal(was_asked(fd), 0);
	clear_env();
	close(fd);

	/*
	 * Nothing anywhere: the metadata service is asked, and a host
	 * without one fails at once, naming it.
	 */
	p = params(NULL, dir, closed_endpoint(t));
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), EHOSTUNREACH);
	assert_string_equal(why, talloc_asprintf(t, "no credentials in the "
		"share's file, the environment or ~/.aws/credentials, and "
		"none from %s: the instance metadata service is unreachable "
		"(not an EC2 instance?)", p.imds_endpoint));
	assert_null(c.keys.access_key);
	assert_int_equal(c.expire, 0);
	/* A missing AWS_SHARED_CREDENTIALS_FILE is nothing there, too. */
	setenv("AWS_SHARED_CREDENTIALS_FILE", missing, 1);
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), EHOSTUNREACH);
	assert_true(strstr(why, "and none from http://127.0.0.1:") != NULL);
	clear_env();
	talloc_free(t);
}

#define ROLES "/latest/meta-data/iam/security-credentials/"

static bool starts(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* A stand-in metadata service answering IMDSv2's three requests. */
static void imds_standin(int fd)
{
	static const char doc[] =
		"{\"Code\": \"Success\", \"AccessKeyId\": \"IMDSKEY\", "
		"\"SecretAccessKey\": \"imdssecret\", "
		"\"Token\": \"imdstoken\", "
		"\"Expiration\": \"2030-01-01T00:00:00Z\"}";
	int i;

	for (i = 0; i < 3; i++) {
		char req[4096], resp[4096];
		const char *body;
		size_t got = 0;
		ssize_t n;
		int c;

		do {
			c = accept(fd, NULL, NULL);
		} while (c == -1 && errno == EAGAIN && usleep(1000) == 0);
		if (c == -1) {
			_exit(1);
		}
		while (got < sizeof(req) - 1 &&
		       (n = read(c, req + got, sizeof(req) - 1 - got)) > 0) {
			got += (size_t)n;
			req[got] = '\0';
			if (strstr(req, "\r\n\r\n") != NULL) {
				break;
			}
		}
		req[got] = '\0';
		if (starts(req, "PUT /latest/api/token ")) {
			body = "TOKEN";
		} else if (starts(req, "GET " ROLES " ")) {
			body = "role\n";
		} else if (starts(req, "GET " ROLES "role ")) {
			body = doc;
		} else {
			_exit(2);
		}
		n = snprintf(resp, sizeof(resp), "HTTP/1.1 200 OK\r\n"
			     "Content-Length: %zu\r\nConnection: close\r\n\r\n"
			     "%s", strlen(body), body);
		if (write(c, resp, (size_t)n) != n) {
			_exit(3);
		}
		close(c);
	}
	_exit(0);
}

static void test_imds_role_credentials(void **state)
{
	TALLOC_CTX *t = talloc_new(NULL);
	const char *dir = test_tmpdir(t, "bfs-creds-test");
	char *url = NULL;
	int fd = listener(t, &url), status = -1;
	struct bfs_creds_params p = params(NULL, dir, url);
	struct bfs_creds c;
	const char *why = NULL;
	pid_t pid;

	(void)state;
	clear_env();
	pid = fork();
	assert_true(pid != -1);
	if (pid == 0) {
		imds_standin(fd);
	}
	close(fd);
	assert_int_equal(bfs_creds_get(t, &p, &c, &why), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	assert_string_equal(c.source, "the instance metadata service (IMDSv2)");
	assert_string_equal(c.imds, url);
	assert_string_equal(c.keys.access_key, "IMDSKEY");
	assert_string_equal(c.keys.secret_key, "imdssecret");
	assert_string_equal(c.keys.session_token, "imdstoken");
	assert_int_equal(c.expire, 1893456000); /* 2030-01-01T00:00:00Z */
	assert_null(why);
	talloc_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_anonymous_needs_nothing),
		cmocka_unit_test(test_a_secret_in_smb_conf_is_refused),
		cmocka_unit_test(test_a_credentials_file_and_its_profiles),
		cmocka_unit_test(test_a_loose_file_works_with_a_warning),
		cmocka_unit_test(test_an_unreadable_file_is_an_error),
		cmocka_unit_test(test_home),
		cmocka_unit_test(test_imds_only_when_no_file_is_named),
		cmocka_unit_test(test_imds_role_credentials),
	};

	bfs_log_set(keep_line);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
