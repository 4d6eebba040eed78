/*
 * C tests' side of test/fakes: start a fake server as a child process, wait for its ready file, talk to its control
 * API, stop it. Blocking by design (plain libcurl easy calls, waitpid): call these only while the test's loop is
 * not running.
 */
#ifndef CRM_TEST_FAKE_PROC_H
#define CRM_TEST_FAKE_PROC_H

#include <jansson.h>
#include <sys/types.h>

typedef struct st_fake_proc_t {
    pid_t pid;
    int port;         /* the fake's service port */
    int control_port; /* its control API */
    char ready_file[256];
} fake_proc_t;

/* Starts `python3 $CRMD_SOURCE_ROOT/test/fakes/<script> --listen 127.0.0.1:0 --ready-file … [extra args]` and waits
 * (≤ 15 s) for it to report its ports. Returns 0 or -1 (with a message on stderr). extra is NULL-terminated. */
int fake_start(fake_proc_t *f, const char *script, const char *const *extra);

/* SIGTERM, then SIGKILL after 5 s; reaps the child. Idempotent. */
void fake_stop(fake_proc_t *f);

/* Sends a control request (method, path, optional JSON body) and returns the parsed JSON answer (NULL on any
 * failure, with a message on stderr). The caller owns the result. */
json_t *fake_control(const fake_proc_t *f, const char *method, const char *path, const char *json_body);

/* Kills every fake started by this process (for atexit and fatal-signal handlers). */
void fake_stop_all(void);

#endif
