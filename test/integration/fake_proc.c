#include "fake_proc.h"

#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_FAKES 8
static pid_t g_pids[MAX_FAKES];

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

void fake_stop_all(void)
{
    for (int i = 0; i < MAX_FAKES; ++i)
        if (g_pids[i] > 0)
            kill(g_pids[i], SIGKILL);
}

int fake_start(fake_proc_t *f, const char *script, const char *const *extra)
{
    memset(f, 0, sizeof(*f));
    const char *root = getenv("CRMD_SOURCE_ROOT");
    if (root == NULL)
        root = ".";
    char path[1024];
    snprintf(path, sizeof(path), "%s/test/fakes/%s", root, script);
    snprintf(f->ready_file, sizeof(f->ready_file), "/tmp/crmd-fake-%d-%ld.json", (int)getpid(), (long)random());
    unlink(f->ready_file);

    const char *argv[32] = {"python3", path, "--listen", "127.0.0.1:0", "--ready-file", f->ready_file};
    int argc = 6;
    for (; extra != NULL && *extra != NULL && argc < 31; ++extra)
        argv[argc++] = *extra;
    argv[argc] = NULL;
    if (posix_spawnp(&f->pid, "python3", NULL, NULL, (char *const *)argv, environ) != 0) {
        fprintf(stderr, "cannot start %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (int i = 0; i < MAX_FAKES; ++i)
        if (g_pids[i] == 0) {
            g_pids[i] = f->pid;
            break;
        }
    for (int waited = 0; waited < 15000; waited += 20) {
        json_error_t jerr;
        json_t *doc = json_load_file(f->ready_file, 0, &jerr);
        if (doc != NULL) {
            f->port = (int)json_integer_value(json_object_get(doc, "port"));
            f->control_port = (int)json_integer_value(json_object_get(doc, "control_port"));
            json_decref(doc);
            unlink(f->ready_file);
            return f->port > 0 && f->control_port > 0 ? 0 : -1;
        }
        int status;
        if (waitpid(f->pid, &status, WNOHANG) == f->pid) {
            fprintf(stderr, "%s exited before it was ready (status %d)\n", script, status);
            f->pid = 0;
            return -1;
        }
        sleep_ms(20);
    }
    fprintf(stderr, "%s did not become ready in 15 s\n", script);
    fake_stop(f);
    return -1;
}

void fake_stop(fake_proc_t *f)
{
    if (f->pid <= 0)
        return;
    kill(f->pid, SIGTERM);
    int status;
    for (int waited = 0; waited < 5000; waited += 20) {
        if (waitpid(f->pid, &status, WNOHANG) == f->pid)
            goto reaped;
        sleep_ms(20);
    }
    kill(f->pid, SIGKILL);
    waitpid(f->pid, &status, 0);
reaped:
    for (int i = 0; i < MAX_FAKES; ++i)
        if (g_pids[i] == f->pid)
            g_pids[i] = 0;
    f->pid = 0;
}

typedef struct {
    char *buf;
    size_t len;
} sink_t;

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    sink_t *s = ud;
    char *b = realloc(s->buf, s->len + size * n + 1);
    if (b == NULL)
        return 0;
    memcpy(b + s->len, p, size * n);
    s->buf = b;
    s->len += size * n;
    s->buf[s->len] = '\0';
    return size * n;
}

json_t *fake_control(const fake_proc_t *f, const char *method, const char *path, const char *json_body)
{
    CURL *e = curl_easy_init();
    if (e == NULL)
        return NULL;
    char url[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", f->control_port, path);
    sink_t sink = {NULL, 0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (json_body != NULL)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, json_body);
    CURLcode rc = curl_easy_perform(e);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    json_t *doc = NULL;
    if (rc != CURLE_OK || status != 200) {
        fprintf(stderr, "fake control %s %s failed: %s, HTTP %ld\n", method, path, curl_easy_strerror(rc), status);
    } else {
        json_error_t jerr;
        doc = json_loadb(sink.buf != NULL ? sink.buf : "null", sink.len, JSON_DECODE_ANY, &jerr);
        if (doc == NULL)
            fprintf(stderr, "fake control %s %s: bad JSON: %s\n", method, path, jerr.text);
    }
    free(sink.buf);
    return doc;
}
