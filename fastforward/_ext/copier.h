/* Gathering records into batch rows, now or on a background thread.
 *
 * ff_gather: copy record i (sizes[i] bytes at src + offsets[i]) into row i of
 * out (rows of `width` bytes), zero-padding each row. Records come in the
 * loader's (random) order, so the hardware prefetcher cannot see the next one
 * coming and each starts with a TLB miss; the loop touches every page of the
 * record FF_PREFETCH_AHEAD places ahead, so those misses overlap the copies.
 *
 * ff_copier: POSIX threads (1 to FF_COPIER_MAX_THREADS) that run ff_gather
 * jobs without the GIL; a job of more than FF_COPIER_PART_BYTES is split into
 * ranges of records, one per thread, and tickets complete in submission order.
 * The loader's scheduler thread submits a batch's copy and goes on to the next
 * batch; the consumer waits for the ticket before it sees
 * the batch. Nothing here touches a Python object: the caller keeps the
 * memory of a job alive until ff_copier_completed() has passed its ticket.
 */
#ifndef FF_COPIER_H
#define FF_COPIER_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

enum { FF_PREFETCH_AHEAD = 4, FF_COPIER_QUEUE = 64, FF_COPIER_MAX_THREADS = 16,
       FF_COPIER_PART_BYTES = 64 * 1024 };

static inline void ff_prefetch_record(const uint8_t *p, uint64_t size) {
    if (size == 0) return;
    for (uint64_t k = 0; k < size; k += 4096) __builtin_prefetch(p + k, 0, 0);
    __builtin_prefetch(p + size - 1, 0, 0);
}

/* The caller has checked that every record fits its row and lies inside src. */
static void ff_gather(const uint8_t *src, const uint64_t *offsets, const uint64_t *sizes,
                      uint8_t *out, uint64_t width, int64_t n) {
    for (int64_t i = 0; i < n && i < FF_PREFETCH_AHEAD; i++)
        ff_prefetch_record(src + offsets[i], sizes[i]);
    for (int64_t i = 0; i < n; i++) {
        if (i + FF_PREFETCH_AHEAD < n)
            ff_prefetch_record(src + offsets[i + FF_PREFETCH_AHEAD], sizes[i + FF_PREFETCH_AHEAD]);
        uint8_t *row = out + (uint64_t)i * width;
        if (sizes[i]) memcpy(row, src + offsets[i], sizes[i]);
        if (sizes[i] < width) memset(row + sizes[i], 0, width - sizes[i]);
    }
}

typedef struct {
    const uint8_t *src;
    const uint64_t *offsets;
    const uint64_t *sizes;
    uint8_t *out;
    uint64_t width;
    int64_t n;
    int parts;             /* ranges of records, each copied by whichever thread is free */
    int left;              /* parts not finished yet */
} ff_copy_job;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t work;   /* a job was queued, or stop was asked */
    pthread_cond_t done;   /* a job finished */
    ff_copy_job jobs[FF_COPIER_QUEUE];
    uint64_t submitted;    /* tickets 1..submitted were queued ... */
    uint64_t completed;    /* ... and 1..completed have finished, in order */
    uint64_t next_job;     /* the job whose part next_part is handed out next (0-based) */
    int next_part;
    int stop;
    int threads;           /* started */
    int running;
    pthread_t thread[FF_COPIER_MAX_THREADS];
} ff_copier;

static void *ff_copier_main(void *arg) {
    ff_copier *c = (ff_copier *)arg;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (c->next_job == c->submitted && !c->stop) pthread_cond_wait(&c->work, &c->lock);
        if (c->next_job == c->submitted) break;  /* stop, and nothing left to hand out */
        ff_copy_job *job = &c->jobs[c->next_job % FF_COPIER_QUEUE];
        int part = c->next_part++;
        if (c->next_part == job->parts) {
            c->next_job++;
            c->next_part = 0;
        }
        if (c->next_job != c->submitted) pthread_cond_signal(&c->work);  /* more for another */
        pthread_mutex_unlock(&c->lock);
        int64_t lo = job->n * part / job->parts, hi = job->n * (part + 1) / job->parts;
        ff_gather(job->src, job->offsets + lo, job->sizes + lo, job->out + (uint64_t)lo * job->width,
                  job->width, hi - lo);
        pthread_mutex_lock(&c->lock);
        job->left--;
        int finished = 0;
        while (c->completed < c->submitted && c->jobs[c->completed % FF_COPIER_QUEUE].left == 0
               && c->completed < c->next_job) {
            c->completed++;
            finished = 1;
        }
        if (finished) pthread_cond_broadcast(&c->done);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Finish every queued job, then end the threads. Waiters and submitters may
 * still use the copier afterwards (jobs then run in the caller). */
static void ff_copier_stop(ff_copier *c) {
    pthread_mutex_lock(&c->lock);
    int running = c->running;
    c->stop = 1;
    c->running = 0;
    pthread_cond_broadcast(&c->work);
    /* every caller returns only once no copy is running (one of them joins) */
    while (c->completed < c->submitted) pthread_cond_wait(&c->done, &c->lock);
    pthread_mutex_unlock(&c->lock);
    if (running)
        for (int k = 0; k < c->threads; k++) pthread_join(c->thread[k], NULL);
}

/* Release the copier's lock and conditions: only once nothing can use it. */
static void ff_copier_destroy(ff_copier *c) {
    ff_copier_stop(c);
    pthread_cond_destroy(&c->done);
    pthread_cond_destroy(&c->work);
    pthread_mutex_destroy(&c->lock);
}

/* Start *threads* threads (at least one). 0 on success, else an errno value. */
static int ff_copier_start(ff_copier *c, int threads) {
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->work, NULL);
    pthread_cond_init(&c->done, NULL);
    if (threads < 1) threads = 1;
    if (threads > FF_COPIER_MAX_THREADS) threads = FF_COPIER_MAX_THREADS;
    c->running = 1;
    for (; c->threads < threads; c->threads++) {
        int err = pthread_create(&c->thread[c->threads], NULL, ff_copier_main, c);
        if (err) {
            ff_copier_destroy(c);  /* joins the threads already started */
            return err;
        }
    }
    return 0;
}

/* Queue a job (waits while FF_COPIER_QUEUE jobs are pending); returns its ticket.
 * Once the copier is stopping, the job runs here and now, and its ticket is 0. */
static uint64_t ff_copier_submit(ff_copier *c, ff_copy_job job) {
    pthread_mutex_lock(&c->lock);
    while (!c->stop && c->submitted - c->completed >= FF_COPIER_QUEUE)
        pthread_cond_wait(&c->done, &c->lock);
    if (c->stop) {
        pthread_mutex_unlock(&c->lock);
        ff_gather(job.src, job.offsets, job.sizes, job.out, job.width, job.n);
        return 0;
    }
    /* a part of at least FF_COPIER_PART_BYTES, so small copies stay on one thread */
    uint64_t bytes = (uint64_t)job.n * job.width;
    uint64_t parts = bytes / FF_COPIER_PART_BYTES;
    if (parts > (uint64_t)c->threads) parts = (uint64_t)c->threads;
    if (parts > (uint64_t)job.n) parts = (uint64_t)job.n;
    job.parts = parts ? (int)parts : 1;
    job.left = job.parts;
    c->jobs[c->submitted % FF_COPIER_QUEUE] = job;
    uint64_t ticket = ++c->submitted;
    pthread_cond_signal(&c->work);
    pthread_mutex_unlock(&c->lock);
    return ticket;
}

/* Wait until the job with this ticket (and every one before it) has finished;
 * -1 for a ticket never given out (it would never finish). */
/* Wait until the copy with `ticket` (and every one before it) has completed, for
 * at most `seconds` (CLOCK_REALTIME, the condition's clock; below 0: no limit):
 * 0 once it has, 1 if the time ran out first, -1 for a ticket never submitted. */
static int ff_copier_wait_for(ff_copier *c, uint64_t ticket, double seconds) {
    struct timespec until;
    if (seconds >= 0) {
        clock_gettime(CLOCK_REALTIME, &until);
        double whole = (double)(int64_t)seconds;
        until.tv_sec += (time_t)whole;
        until.tv_nsec += (long)((seconds - whole) * 1e9);
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec += 1;
            until.tv_nsec -= 1000000000L;
        }
    }
    int late = 0;
    pthread_mutex_lock(&c->lock);
    if (ticket > c->submitted) {
        pthread_mutex_unlock(&c->lock);
        return -1;
    }
    while (c->completed < ticket && !late) {
        if (seconds < 0)
            pthread_cond_wait(&c->done, &c->lock);
        else
            late = pthread_cond_timedwait(&c->done, &c->lock, &until) == ETIMEDOUT;
    }
    late = c->completed < ticket;
    pthread_mutex_unlock(&c->lock);
    return late;
}

static int ff_copier_wait(ff_copier *c, uint64_t ticket) {
    return ff_copier_wait_for(c, ticket, -1.0);
}

static uint64_t ff_copier_submitted(ff_copier *c) {
    pthread_mutex_lock(&c->lock);
    uint64_t submitted = c->submitted;
    pthread_mutex_unlock(&c->lock);
    return submitted;
}

static uint64_t ff_copier_completed(ff_copier *c) {
    pthread_mutex_lock(&c->lock);
    uint64_t completed = c->completed;
    pthread_mutex_unlock(&c->lock);
    return completed;
}

#endif
