#include "password.h"

#include <argon2.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "rand.h"

#define SALT_BYTES 16
#define HASH_BYTES 32
/* Stored hashes this module accepts to verify: at most these costs, so a forged or corrupted row cannot make one
 * verification take gigabytes or minutes. */
#define STORED_M_MAX 262144
#define STORED_T_MAX 64
#define STORED_P_MAX 16

typedef enum { OP_HASH, OP_VERIFY } op_kind_t;

struct st_crm_password_hasher_t {
    uv_loop_t *loop;
    crm_password_params_t params;
    size_t max_in_flight;
    size_t in_flight;
    int freeing;
    char dummy[CRM_PASSWORD_ENCODED_MAX];
};

struct st_crm_password_op_t {
    uv_work_t work;
    crm_password_hasher_t *h;
    op_kind_t kind;
    int detached;
    crm_password_hash_cb hash_cb;
    crm_password_verify_cb verify_cb;
    void *data;
    char *password;
    size_t len;
    uint8_t salt[SALT_BYTES];
    char encoded[CRM_PASSWORD_ENCODED_MAX];
    int rc;    /* argon2 result, from the worker */
    int dummy; /* verifying against the dummy hash: never a match */
};

void crm_password_params_default(crm_password_params_t *p)
{
    p->m_kib = 19456;
    p->t = 2;
    p->p = 1;
}

static int params_valid(const crm_password_params_t *p)
{
    return p->p >= 1 && p->p <= 16 && p->t >= 1 && p->t <= 64 && p->m_kib >= 8 * p->p && p->m_kib <= 4194304;
}

/* Reads the parameters of a PHC argon2id string; 0 when it is one this module can verify. */
static int parse_encoded(const char *e, crm_password_params_t *out)
{
    unsigned v, m, t, p;
    int n = 0;
    if (strlen(e) >= CRM_PASSWORD_ENCODED_MAX ||
        sscanf(e, "$argon2id$v=%u$m=%u,t=%u,p=%u$%n", &v, &m, &t, &p, &n) != 4 || n == 0)
        return -1;
    if (v != ARGON2_VERSION_13 || p < 1 || p > STORED_P_MAX || t < 1 || t > STORED_T_MAX || m < 8 * p ||
        m > STORED_M_MAX)
        return -1;
    out->m_kib = m;
    out->t = t;
    out->p = p;
    return 0;
}

static int hash_now(const crm_password_params_t *p, const char *pw, size_t len, const uint8_t *salt, char *out)
{
    return argon2id_hash_encoded(p->t, p->m_kib, p->p, pw, len, salt, SALT_BYTES, HASH_BYTES, out,
                                 CRM_PASSWORD_ENCODED_MAX);
}

int crm_password_hasher_create(uv_loop_t *loop, const crm_password_params_t *params, size_t max_in_flight,
                               crm_password_hasher_t **out)
{
    if (loop == NULL || params == NULL || out == NULL || !params_valid(params) || max_in_flight == 0)
        return CRM_E_INVAL;
    crm_password_hasher_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return CRM_E_NOMEM;
    h->loop = loop;
    h->params = *params;
    h->max_in_flight = max_in_flight;
    /* The dummy: a hash of a random password nobody knows, with the current parameters, so that verifying against
     * it costs exactly what a real verification costs. */
    uint8_t pw[32], salt[SALT_BYTES];
    if (crm_random_bytes(pw, sizeof(pw)) != 0 || crm_random_bytes(salt, sizeof(salt)) != 0) {
        free(h);
        return CRM_E_IO;
    }
    int rc = hash_now(&h->params, (const char *)pw, sizeof(pw), salt, h->dummy);
    OPENSSL_cleanse(pw, sizeof(pw));
    if (rc != ARGON2_OK) {
        free(h);
        return rc == ARGON2_MEMORY_ALLOCATION_ERROR ? CRM_E_NOMEM : CRM_E_INVAL;
    }
    *out = h;
    return 0;
}

void crm_password_hasher_free(crm_password_hasher_t *h)
{
    if (h == NULL)
        return;
    if (h->in_flight > 0) {
        h->freeing = 1;
        return;
    }
    free(h);
}

size_t crm_password_in_flight(const crm_password_hasher_t *h)
{
    return h->in_flight;
}

static void op_free(crm_password_op_t *op)
{
    if (op->password != NULL) {
        OPENSSL_cleanse(op->password, op->len);
        free(op->password);
    }
    OPENSSL_cleanse(op->encoded, sizeof(op->encoded));
    free(op);
}

/* On a thread-pool thread: only the argon2 call and wiping the password touch this op here. */
static void on_work(uv_work_t *w)
{
    crm_password_op_t *op = w->data;
    if (op->kind == OP_HASH)
        op->rc = hash_now(&op->h->params, op->password, op->len, op->salt, op->encoded);
    else
        op->rc = argon2id_verify(op->encoded, op->password, op->len);
    OPENSSL_cleanse(op->password, op->len);
}

static void on_after_work(uv_work_t *w, int status)
{
    crm_password_op_t *op = w->data;
    crm_password_hasher_t *h = op->h;
    --h->in_flight;
    if (!op->detached && h->freeing) {
        /* The hasher went away first: the caller still learns that its operation ended, so it can free its data. */
        if (op->kind == OP_HASH)
            op->hash_cb(CRM_E_SHUTDOWN, NULL, op->data);
        else
            op->verify_cb(CRM_E_SHUTDOWN, 0, 0, op->data);
    } else if (!op->detached) {
        if (op->kind == OP_HASH) {
            int err = status != 0                                ? CRM_E_SHUTDOWN
                      : op->rc == ARGON2_OK                      ? 0
                      : op->rc == ARGON2_MEMORY_ALLOCATION_ERROR ? CRM_E_NOMEM
                                                                 : CRM_E_INVAL;
            op->hash_cb(err, err == 0 ? op->encoded : NULL, op->data);
        } else {
            int err = status != 0                                               ? CRM_E_SHUTDOWN
                      : op->rc == ARGON2_OK || op->rc == ARGON2_VERIFY_MISMATCH ? 0
                      : op->rc == ARGON2_MEMORY_ALLOCATION_ERROR                ? CRM_E_NOMEM
                                                                                : CRM_E_PARSE;
            int match = err == 0 && op->rc == ARGON2_OK && !op->dummy;
            crm_password_params_t used;
            int rehash = match && parse_encoded(op->encoded, &used) == 0 &&
                         (used.m_kib != h->params.m_kib || used.t != h->params.t || used.p != h->params.p);
            op->verify_cb(err, match, rehash, op->data);
        }
    }
    op_free(op);
    if (h->freeing && h->in_flight == 0)
        free(h);
}

static int submit(crm_password_hasher_t *h, crm_password_op_t *op, crm_password_op_t **out)
{
    op->work.data = op;
    op->h = h;
    if (uv_queue_work(h->loop, &op->work, on_work, on_after_work) != 0) {
        op_free(op);
        return CRM_E_SHUTDOWN;
    }
    ++h->in_flight;
    if (out != NULL)
        *out = op;
    return 0;
}

static crm_password_op_t *op_new(crm_password_hasher_t *h, const char *password, size_t len, int *err)
{
    if (password == NULL && len > 0) {
        *err = CRM_E_INVAL;
        return NULL;
    }
    if (len > CRM_PASSWORD_MAX_BYTES) {
        *err = CRM_E_TOO_LARGE;
        return NULL;
    }
    if (h->in_flight >= h->max_in_flight || h->freeing) {
        *err = CRM_E_QUEUE_FULL;
        return NULL;
    }
    crm_password_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL || (op->password = malloc(len + 1)) == NULL) {
        free(op);
        *err = CRM_E_NOMEM;
        return NULL;
    }
    memcpy(op->password, password, len);
    op->password[len] = '\0';
    op->len = len;
    return op;
}

int crm_password_hash(crm_password_hasher_t *h, const char *password, size_t len, crm_password_hash_cb cb, void *data,
                      crm_password_op_t **out)
{
    if (h == NULL || cb == NULL)
        return CRM_E_INVAL;
    int err = 0;
    crm_password_op_t *op = op_new(h, password, len, &err);
    if (op == NULL)
        return err;
    if (crm_random_bytes(op->salt, sizeof(op->salt)) != 0) {
        op_free(op);
        return CRM_E_IO;
    }
    op->kind = OP_HASH;
    op->hash_cb = cb;
    op->data = data;
    return submit(h, op, out);
}

int crm_password_verify(crm_password_hasher_t *h, const char *encoded, const char *password, size_t len,
                        crm_password_verify_cb cb, void *data, crm_password_op_t **out)
{
    if (h == NULL || cb == NULL)
        return CRM_E_INVAL;
    crm_password_params_t ignored;
    if (encoded != NULL && parse_encoded(encoded, &ignored) != 0)
        return CRM_E_PARSE;
    int err = 0;
    crm_password_op_t *op = op_new(h, password, len, &err);
    if (op == NULL)
        return err;
    op->kind = OP_VERIFY;
    op->verify_cb = cb;
    op->data = data;
    snprintf(op->encoded, sizeof(op->encoded), "%s", encoded != NULL ? encoded : h->dummy);
    op->dummy = encoded == NULL;
    return submit(h, op, out);
}

void crm_password_op_detach(crm_password_op_t *op)
{
    if (op != NULL)
        op->detached = 1;
}
