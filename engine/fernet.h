/*
 * fernet: Fernet keys, tokens and key generation (spec:
 * github.com/fernet/spec), on OpenSSL. Knows nothing of Lua or SQLite.
 * Only this unit includes OpenSSL headers.
 */
// SPDX-License-Identifier: MIT
#ifndef MT_FERNET_H
#define MT_FERNET_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "err.h"

// 16-byte signing key + 16-byte encryption key. Caller-allocated; holds
// secret bytes, so wipe with mt_fernet_key_clear.
typedef struct mt_fernet_key {
    uint8_t signing[16];
    uint8_t encryption[16];
} mt_fernet_key;

// Parses the 44-character base64url key text (exact '=' padding, no
// whitespace; the caller strips one trailing newline from a key file).
// MT_EINVAL with a message that never quotes the key text.
int mt_fernet_key_parse(mt_fernet_key *key, const char *text, size_t len, mt_err *err);
void mt_fernet_key_clear(mt_fernet_key *key);

// A new random key as 44 characters of base64url text plus NUL into out[45].
int mt_fernet_keygen(char out[45], mt_err *err);

// Encrypts plain into a token (base64url text, NUL-terminated) appended to
// *token. now: Unix seconds to embed; iv: 16 bytes, or NULL for random IV
// from the OS CSPRNG (tests pass a fixed IV).
int mt_fernet_encrypt(const mt_fernet_key *key, const uint8_t *plain, size_t plain_len, int64_t now,
                      const uint8_t *iv, mt_buf *token, mt_err *err);

// Verifies and decrypts a token. ttl <= 0: no time checks at all. ttl > 0:
// MT_EEXPIRED when now - timestamp > ttl, MT_ECRYPTO when the timestamp is
// more than 60 s in the future. The MAC is checked (CRYPTO_memcmp) before
// any decryption. Returns MT_ECRYPTO with the fixed text "invalid token" for
// every structural or MAC failure; plain should be a secure mt_buf, the
// plaintext is appended to it. why (may be NULL) receives a static string
// naming the check that rejected the token, for tests only ("base64",
// "version", "length", "mac", "padding", "expired", "future").
int mt_fernet_decrypt(const mt_fernet_key *key, const char *token, size_t token_len, int64_t ttl,
                      int64_t now, mt_buf *plain, const char **why, mt_err *err);

// Fills n bytes from the OS CSPRNG (used for IVs, keys and task ids).
int mt_random_bytes(uint8_t *p, size_t n);

// Strict base64url (RFC 4648 §5 with '=' padding to a multiple of 4,
// zero unused bits, nothing after the padding). Exposed for tests and keys.
int mt_b64url_decode(const char *text, size_t len, mt_buf *out);
int mt_b64url_encode(const uint8_t *p, size_t n, mt_buf *out);

#endif
