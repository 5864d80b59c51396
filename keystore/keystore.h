/* SPDX-License-Identifier: Apache-2.0 */
#ifndef GW_KEYSTORE_H
#define GW_KEYSTORE_H

#include <stddef.h>
#include <stdint.h>

/*
 * Per-device credentials: the sensor's DTLS PSK and the device's upstream certificate and key.
 * The API is message-shaped (give me the PSK for this identity) so the store could later move
 * into a separate, privileged process without changing its callers.
 *
 * Backend "soft": <state_dir>/keystore/<device-id>/ holding
 *   psk.identity  the sensor's PSK identity (optional; defaults to the device id)
 *   psk.key       the PSK as hex, 16 to 64 bytes            (secret: mode 0600)
 *   cert.pem      the device's client certificate (chain)
 *   key.pem       the device's private key                  (secret: mode 0600)
 * The keystore directory and each device directory must be 0700 and owned by the daemon's
 * user; a secret readable by group or others is refused.
 */

#define KEYSTORE_PSK_MAX 64

struct keystore;

/* Opens and checks the store; errors are logged with the file and what to do. */
int keystore_open(struct keystore **out, const char *state_dir, const char *backend);
void keystore_free(struct keystore *ks);

size_t keystore_count(const struct keystore *ks);
/* The i-th device id, in sorted order. */
const char *keystore_device_id(const struct keystore *ks, size_t i);

/*
 * Looks up the sensor PSK for a DTLS identity. On success copies the key into key (at least
 * KEYSTORE_PSK_MAX bytes), its length into *keylen and the owning device id into *device_id.
 * Returns -ENOENT for an unknown identity.
 */
int keystore_psk_lookup(const struct keystore *ks, const uint8_t *identity, size_t idlen,
                        const char **device_id, uint8_t *key, size_t *keylen);

/* Files to hand to the TLS client for a device's upstream session. */
int keystore_tls_files(const struct keystore *ks, const char *device_id, const char **cert_file,
                       const char **key_file);

#endif
