/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keystore.h"

/* A temp state dir per test; devices written the way an operator or gwctl would. */
struct fixture {
	char state[64];
	char ks[96];
};

static void
write_file(const char *dir, const char *name, const char *content, mode_t mode)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
	assert_true(fd >= 0);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
	close(fd);
}

static char *
add_device(struct fixture *f, const char *id, const char *pskhex, const char *identity)
{
	static char dir[160];

	snprintf(dir, sizeof(dir), "%s/%s", f->ks, id);
	assert_int_equal(mkdir(dir, 0700), 0);
	write_file(dir, "psk.key", pskhex, 0600);
	if (identity)
		write_file(dir, "psk.identity", identity, 0644);
	write_file(dir, "cert.pem", "-----BEGIN CERTIFICATE-----\n", 0644);
	write_file(dir, "key.pem", "-----BEGIN PRIVATE KEY-----\n", 0600);
	return dir;
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	strcpy(f->state, "/tmp/gw-ks-XXXXXX");
	assert_non_null(mkdtemp(f->state));
	snprintf(f->ks, sizeof(f->ks), "%s/keystore", f->state);
	assert_int_equal(mkdir(f->ks, 0700), 0);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->state);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

#define KEY_A "00112233445566778899aabbccddeeff"
#define KEY_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

static void
finds_the_psk_of_each_identity(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks;
	uint8_t key[KEYSTORE_PSK_MAX];
	const char *device, *cert, *priv;
	size_t len;

	add_device(f, "dev-b", KEY_B, "sensor-b\n");
	add_device(f, "dev-a", KEY_A, NULL);
	assert_int_equal(keystore_open(&ks, f->state, "soft"), 0);
	assert_int_equal(keystore_count(ks), 2);
	assert_string_equal(keystore_device_id(ks, 0), "dev-a");
	assert_string_equal(keystore_device_id(ks, 1), "dev-b");

	/* Without psk.identity the identity is the device id. */
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-a", 5, &device, key, &len),
	                 0);
	assert_string_equal(device, "dev-a");
	assert_int_equal(len, 16);
	assert_int_equal(key[0], 0x00);
	assert_int_equal(key[15], 0xff);

	assert_int_equal(
	        keystore_psk_lookup(ks, (const uint8_t *)"sensor-b", 8, &device, key, &len), 0);
	assert_string_equal(device, "dev-b");
	assert_int_equal(len, 32);
	assert_int_equal(key[0], 0xff);

	/* The device id is not an identity when psk.identity says otherwise. */
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-b", 5, &device, key, &len),
	                 -ENOENT);
	/* Nor is a prefix of one. */
	assert_int_equal(keystore_psk_lookup(ks, (const uint8_t *)"dev-", 4, &device, key, &len),
	                 -ENOENT);
	assert_int_equal(keystore_tls_files(ks, "dev-a", &cert, &priv), 0);
	assert_non_null(strstr(cert, "/keystore/dev-a/cert.pem"));
	assert_non_null(strstr(priv, "/keystore/dev-a/key.pem"));
	assert_int_equal(keystore_tls_files(ks, "dev-c", &cert, &priv), -ENOENT);
	keystore_free(ks);
}

static void
refuses_secrets_others_can_read(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks;
	char path[256], *dir = add_device(f, "dev-a", KEY_A, NULL);

	snprintf(path, sizeof(path), "%s/psk.key", dir);
	assert_int_equal(chmod(path, 0644), 0);
	assert_int_equal(keystore_open(&ks, f->state, "soft"), -EPERM);
	assert_int_equal(chmod(path, 0600), 0);

	snprintf(path, sizeof(path), "%s/key.pem", dir);
	assert_int_equal(chmod(path, 0640), 0);
	assert_int_equal(keystore_open(&ks, f->state, "soft"), -EPERM);
	assert_int_equal(chmod(path, 0600), 0);

	assert_int_equal(chmod(dir, 0755), 0);
	assert_int_equal(keystore_open(&ks, f->state, "soft"), -EPERM);
	assert_int_equal(chmod(dir, 0700), 0);

	assert_int_equal(chmod(f->ks, 0750), 0);
	assert_int_equal(keystore_open(&ks, f->state, "soft"), -EPERM);
	assert_int_equal(chmod(f->ks, 0700), 0);

	assert_int_equal(keystore_open(&ks, f->state, "soft"), 0);
	keystore_free(ks);
}

static void
refuses_malformed_keys(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks;
	char *dir = add_device(f, "dev-a", "0011", NULL);

	/* RFC 7925: at least 128 bits. */
	assert_int_equal(keystore_open(&ks, f->state, "soft"), -EINVAL);
	write_file(dir, "psk.key", "zz112233445566778899aabbccddeeff", 0600);
	assert_int_equal(keystore_open(&ks, f->state, "soft"), -EINVAL);
	write_file(dir, "psk.key", KEY_A "0", 0600);
	assert_int_equal(keystore_open(&ks, f->state, "soft"), -EINVAL);
	write_file(dir, "psk.key", KEY_A "\n", 0600);
	assert_int_equal(keystore_open(&ks, f->state, "soft"), 0);
	keystore_free(ks);
}

static void
refuses_shared_identities(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks;

	add_device(f, "dev-a", KEY_A, "same");
	add_device(f, "dev-b", KEY_B, "same");
	assert_int_equal(keystore_open(&ks, f->state, "soft"), -EEXIST);
}

static void
creates_a_missing_store_closed_to_others(void **state)
{
	struct fixture *f = *state;
	struct keystore *ks;
	struct stat st;

	assert_int_equal(rmdir(f->ks), 0);
	assert_int_equal(keystore_open(&ks, f->state, "soft"), 0);
	assert_int_equal(keystore_count(ks), 0);
	assert_int_equal(stat(f->ks, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	keystore_free(ks);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(finds_the_psk_of_each_identity, setup, teardown),
	        cmocka_unit_test_setup_teardown(refuses_secrets_others_can_read, setup, teardown),
	        cmocka_unit_test_setup_teardown(refuses_malformed_keys, setup, teardown),
	        cmocka_unit_test_setup_teardown(refuses_shared_identities, setup, teardown),
	        cmocka_unit_test_setup_teardown(creates_a_missing_store_closed_to_others, setup,
	                                        teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
