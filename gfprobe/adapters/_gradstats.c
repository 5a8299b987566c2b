/*
 * gfprobe's CPU statistics kernel: the hot path of recording on a CPU.
 *
 * For each gradient it computes, in ONE pass over memory, the four statistics of the raw
 * gradient g (sum g^2, sum |g|, max |g|, non-finite count) and, when a mask m is given, the
 * same four of the effective gradient g * m, over the active entries (a second pass, over memory
 * still in cache).
 * Separate BLAS calls (dot, asum, iamax) read the gradient three times; when the optimizer
 * steps the gradient is no longer in cache, so each extra read costs about as much as the
 * first. One pass from memory is the physical floor.
 *
 * Layout contract (checked by the Python caller, gfprobe/adapters/torch_stats.py):
 *   ptrs[i]  address of tensor i's first element (float32 or float64, dense, any order)
 *   lens[i]  number of elements
 *   dtypes[i] 0 = float32, 1 = float64
 *   masks[i] 0, or the address of the tensor's mask packed 8 weights to a byte, little bit
 *            order (bit l of byte k is element 8k+l, as numpy.packbits(..., bitorder="little")),
 *            in the same element order as the gradient
 *   out      float64 [8, stride]: out[f * stride + i] for field f in the order of
 *            gfprobe.store.schema.STAT_FIELDS[0:8] (raw four, then masked four)
 * The GIL is released while it runs, so gfprobe's writer thread can work meanwhile.
 *
 * Threads: the read is memory-bound, and one core cannot draw the memory bandwidth two can.
 * With ``threads`` > 1 the elements of all tensors, laid end to end, are cut into that many
 * contiguous shares (cuts at multiples of BLOCK inside a tensor), each summed into partial
 * statistics that are then combined per tensor. The shares run in torch's own OpenMP team (its
 * libgomp, named by use_openmp): a thread of our own would have to share its core with torch's
 * worker, which spins there between torch's parallel regions; torch's worker takes our share at
 * once instead. Without use_openmp, or below min_share elements a thread, one thread computes.
 * Measured on a 2-core EPYC VM, in the 4x512 MLP's training loop (1.2 M float32 gradients, just
 * after backward): 169 us on one thread, 106 us on two. Alone, two threads gained from 256 K
 * elements up and lost below 128 K (the default min_share); a team asleep (no torch op for ~10 ms)
 * takes 60-100 us to wake, which the optimizer's first parallel op would otherwise pay.
 *
 * Precision: float32 values are summed in float32 SIMD lanes over blocks of BLOCK elements,
 * then the block sums in float64 (relative error ~1e-6, well below what the measures need).
 * Non-finite values: the fast pass notices them (max |g| reaches the Inf bit pattern) and the
 * tensor (a thread's share of it) is recomputed exactly by a scalar pass: sums are then NaN/Inf as IEEE arithmetic
 * gives them, max |g| is NaN if any NaN, and the non-finite entries are counted.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 4096 /* elements summed in float32 lanes before a float64 sum; rounded down to a multiple of the unroll */
#define ABS_MASK 0x7fffffffu
#define INF_BITS 0x7f800000

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
/* AVX2 where the CPU has it, SSE2 (the x86-64 baseline) elsewhere; chosen once at load. */
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

typedef struct {
    double sumsq, sum_abs, max_abs, nonfinite;
} Stats;

static void finish_block(const v8f *ss, const v8f *sa, const v8i *mx, int lanes_sets, Stats *s,
                         int32_t *max_bits) {
    float block_ss = 0.0f, block_sa = 0.0f;
    for (int u = 0; u < lanes_sets; u++)
        for (int l = 0; l < 8; l++) {
            block_ss += ss[u][l];
            block_sa += sa[u][l];
            if (mx[u][l] > *max_bits) *max_bits = mx[u][l];
        }
    s->sumsq += block_ss;
    s->sum_abs += block_sa;
}

static inline v8i load_abs(const float *x) {
    v8i bits;
    memcpy(&bits, x, sizeof bits);
    return bits & (v8i){ABS_MASK, ABS_MASK, ABS_MASK, ABS_MASK, ABS_MASK, ABS_MASK, ABS_MASK, ABS_MASK};
}

static inline v8f as_float(v8i bits) {
    v8f f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* |x| bit patterns order like the magnitudes they encode, so max|x| is an integer max. */
static inline v8i max_bits8(v8i a, v8i b) {
    v8i gt = a > b;
    return (a & gt) | (b & ~gt);
}

static float bits_to_float(int32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline int active(const uint8_t *mask_bits, int64_t i) {
    return (mask_bits[i >> 3] >> (i & 7)) & 1;
}

/* Exact scalar statistics, used when a tensor holds NaN or Inf. */
static void exact_f32(const float *x, const uint8_t *mask_bits, int64_t n, Stats *s) {
    double ss = 0, sa = 0, mx = 0, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (mask_bits && !active(mask_bits, i)) continue;
        double a = fabs((double)x[i]);
        ss += a * a;
        sa += a;
        if (a > mx || isnan(a)) mx = isnan(mx) ? mx : a;
        bad += !isfinite(a);
    }
    s->sumsq = ss, s->sum_abs = sa, s->max_abs = mx, s->nonfinite = bad;
}

static inline v8i active8(const uint8_t *mask_bits, int64_t i) {
    /* i is a multiple of 8: one mask byte spread over the lanes, -1 where the weight is active */
    const v8i lane_bit = {1, 2, 4, 8, 16, 32, 64, 128};
    return (((v8i){0} + (int32_t)mask_bits[i >> 3]) & lane_bit) != 0;
}

/* Statistics of all entries (mask_bits NULL) or of the active ones. With a mask it runs right
 * after the unmasked pass over the same tensor, whose memory is then still in cache. The
 * compiler unswitches the loop on mask_bits, so the unmasked pass pays nothing for it. */
MULTIVERSION
static void stats_f32(const float *x, const uint8_t *mask_bits, int64_t n, Stats *s) {
    enum { U = 3 }; /* independent accumulators: hide the add latency */
    int32_t max_bits = 0;
    int64_t i = 0;
    memset(s, 0, sizeof *s);
    const int64_t block = BLOCK / (8 * U) * (8 * U);
    while (i < n) {
        int64_t end = i + block < n ? i + block : n;
        v8f ss[U] = {{0}}, sa[U] = {{0}};
        v8i mx[U] = {{0}};
        for (; i + 8 * U <= end; i += 8 * U)
            for (int u = 0; u < U; u++) {
                v8i a = load_abs(x + i + 8 * u);
                if (mask_bits) a &= active8(mask_bits, i + 8 * u);
                v8f f = as_float(a);
                ss[u] += f * f;
                sa[u] += f;
                mx[u] = max_bits8(a, mx[u]);
            }
        finish_block(ss, sa, mx, U, s, &max_bits);
        for (; i < end; i++) {
            if (mask_bits && !active(mask_bits, i)) continue;
            int32_t a;
            memcpy(&a, x + i, sizeof a);
            a &= ABS_MASK;
            float f = bits_to_float(a);
            s->sumsq += (double)f * f;
            s->sum_abs += f;
            if (a > max_bits) max_bits = a;
        }
    }
    if (max_bits >= INF_BITS) {
        exact_f32(x, mask_bits, n, s);
        return;
    }
    s->max_abs = bits_to_float(max_bits);
}

/* float64 gradients are rare on the hot path (double-precision models): a plain exact loop. */
static void stats_f64(const double *x, const uint8_t *mask_bits, int64_t n, Stats *s) {
    double ss[4] = {0}, sa[4] = {0}, mx = 0, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (mask_bits && !active(mask_bits, i)) continue;
        double a = fabs(x[i]);
        ss[i & 3] += a * a;
        sa[i & 3] += a;
        if (a > mx || isnan(a)) mx = isnan(mx) ? mx : a;
        bad += !isfinite(a);
    }
    s->sumsq = ss[0] + ss[1] + ss[2] + ss[3];
    s->sum_abs = sa[0] + sa[1] + sa[2] + sa[3];
    s->max_abs = mx;
    s->nonfinite = bad;
}

/* Partial statistics of elements [start, end) of tensor i; start is a multiple of BLOCK. */
static void stats_range(uintptr_t ptr, int8_t dtype, uintptr_t mask_ptr, int64_t start, int64_t end, Stats *raw,
                        Stats *eff) {
    const uint8_t *mask = mask_ptr ? (const uint8_t *)mask_ptr + start / 8 : NULL;
    int64_t n = end - start;
    if (dtype == 0) {
        const float *x = (const float *)ptr + start;
        stats_f32(x, NULL, n, raw);
        if (mask) stats_f32(x, mask, n, eff); /* right after: this share is still in cache */
    } else {
        const double *x = (const double *)ptr + start;
        stats_f64(x, NULL, n, raw);
        if (mask) stats_f64(x, mask, n, eff);
    }
    if (!mask) *eff = *raw;
}

/* Partial statistics combine as the exact scalar pass would: sums and counts add (IEEE gives
 * NaN/Inf as one pass would, all terms being >= 0), the maximum is NaN if any part's is. */
static void merge(Stats *into, const Stats *part) {
    into->sumsq += part->sumsq;
    into->sum_abs += part->sum_abs;
    into->nonfinite += part->nonfinite;
    if (!isnan(into->max_abs) && (isnan(part->max_abs) || part->max_abs > into->max_abs))
        into->max_abs = part->max_abs;
}

typedef struct {
    const uint64_t *ptrs, *masks;
    const int64_t *lens;
    const int8_t *dtypes;
    Py_ssize_t n;
    int64_t total;  /* elements of all tensors */
    int threads;
    Stats *partial; /* [threads][n][2]: raw, then effective; zero where a share has none */
} Job;

/* Where share cut ``cut`` (an offset into all tensors end to end) falls in a tensor starting at
 * ``offset``: inside it, rounded down to a multiple of BLOCK, so that consecutive cuts give
 * consecutive, disjoint ranges that cover the tensor exactly. */
static int64_t local_cut(int64_t cut, int64_t offset, int64_t len) {
    int64_t c = cut - offset;
    if (c <= 0) return 0;
    if (c >= len) return len;
    return c / BLOCK * BLOCK;
}

static void run_share(const Job *job, int t) {
    /* in 128-bit arithmetic: total * (t + 1) may exceed int64 for huge inputs */
    int64_t lo = (int64_t)((__int128)job->total * t / job->threads);
    int64_t hi = (int64_t)((__int128)job->total * (t + 1) / job->threads);
    int64_t offset = 0;
    for (Py_ssize_t i = 0; i < job->n && offset < hi; i++) {
        int64_t len = job->lens[i];
        int64_t start = local_cut(lo, offset, len), end = local_cut(hi, offset, len);
        if (start < end) {
            Stats *out = job->partial + 2 * ((Py_ssize_t)t * job->n + i);
            stats_range((uintptr_t)job->ptrs[i], job->dtypes[i], (uintptr_t)job->masks[i], start, end, out, out + 1);
        }
        offset += len;
    }
}

/* torch's OpenMP runtime, when use_openmp found it: GOMP_parallel runs fn on a team of threads,
 * the caller's own team (the one torch's parallel regions use) when it asks for that size. */
typedef void (*gomp_parallel_fn)(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags);
typedef int (*omp_int_fn)(void);
static gomp_parallel_fn team_parallel;
static omp_int_fn team_thread_num, team_size;

static void team_member(void *data) {
    const Job *job = data;
    /* a team smaller than asked for (a nested region, a thread limit) takes the shares in turn */
    int size = team_size();
    for (int t = team_thread_num(); t < job->threads; t += size) run_share(job, t);
}

static void run_job(Job *job) {
    if (job->threads > 1 && team_parallel != NULL) {
        team_parallel(team_member, job, (unsigned)job->threads, 0);
        return;
    }
    for (int t = 0; t < job->threads; t++) run_share(job, t);
}

static void store(double *out, Py_ssize_t stride, Py_ssize_t i, int first_field, const Stats *s) {
    out[(first_field + 0) * stride + i] = s->sumsq;
    out[(first_field + 1) * stride + i] = s->sum_abs;
    out[(first_field + 2) * stride + i] = s->max_abs;
    out[(first_field + 3) * stride + i] = s->nonfinite;
}

static int check_buffer(const Py_buffer *b, Py_ssize_t itemsize, Py_ssize_t count, const char *name) {
    if (b->itemsize != itemsize || b->len < itemsize * count) {
        PyErr_Format(PyExc_ValueError, "gradstats: %s must hold %zd items of %zd bytes", name, count, itemsize);
        return 0;
    }
    return 1;
}

/* How many threads share the work: at most ``threads``, each with at least ``min_share`` elements
 * (waking a thread for a few kilobytes costs more than it saves). */
static int share_count(int64_t total, long threads, Py_ssize_t min_share) {
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64; /* bounds the partials table; more shares gain nothing */
    if (min_share < 1) min_share = 1;
    int64_t most = total / min_share;
    return (int)(threads < most ? threads : (most < 1 ? 1 : most));
}

static int compute_all(const Py_buffer *ptrs, const Py_buffer *lens, const Py_buffer *dtypes,
                       const Py_buffer *masks, double *out, Py_ssize_t n, Py_ssize_t stride, long threads,
                       Py_ssize_t min_share) {
    Job job = {ptrs->buf, masks->buf, lens->buf, dtypes->buf, n, 0, 1, NULL};
    for (Py_ssize_t i = 0; i < n; i++) {
        if (job.lens[i] < 0 || job.dtypes[i] < 0 || job.dtypes[i] > 1) {
            PyErr_Format(PyExc_ValueError, "gradstats: tensor %zd has length %lld and dtype code %d", i,
                         (long long)job.lens[i], (int)job.dtypes[i]);
            return 0;
        }
        job.total += job.lens[i];
    }
    job.threads = share_count(job.total, threads, min_share);
    job.partial = calloc((size_t)job.threads * (size_t)(n > 0 ? n : 1) * 2, sizeof(Stats));
    if (job.partial == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    Py_BEGIN_ALLOW_THREADS
    run_job(&job);
    for (Py_ssize_t i = 0; i < n; i++) {
        Stats raw = job.partial[2 * i], eff = job.partial[2 * i + 1];
        for (int t = 1; t < job.threads; t++) {
            merge(&raw, &job.partial[2 * ((Py_ssize_t)t * n + i)]);
            merge(&eff, &job.partial[2 * ((Py_ssize_t)t * n + i) + 1]);
        }
        store(out, stride, i, 0, &raw);
        store(out, stride, i, 4, &eff);
    }
    Py_END_ALLOW_THREADS
    free(job.partial);
    return 1;
}

static PyObject *gradstats_compute(PyObject *self, PyObject *args) {
    Py_buffer ptrs, lens, dtypes, masks, out;
    Py_ssize_t n, stride, min_share = 1 << 17;
    long threads = 1;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*nn|ln", &ptrs, &lens, &dtypes, &masks, &out, &n, &stride, &threads,
                          &min_share))
        return NULL;
    PyObject *result = NULL;
    if (n < 0 || stride < n) {
        PyErr_SetString(PyExc_ValueError, "gradstats: need 0 <= n <= stride");
    } else if (check_buffer(&ptrs, 8, n, "ptrs") && check_buffer(&lens, 8, n, "lens") &&
               check_buffer(&dtypes, 1, n, "dtypes") && check_buffer(&masks, 8, n, "masks") &&
               check_buffer(&out, 8, 8 * stride, "out") &&
               compute_all(&ptrs, &lens, &dtypes, &masks, out.buf, n, stride, threads, min_share)) {
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&ptrs);
    PyBuffer_Release(&lens);
    PyBuffer_Release(&dtypes);
    PyBuffer_Release(&masks);
    PyBuffer_Release(&out);
    return result;
}

/* use_openmp(path): run shares in the OpenMP runtime ``path`` names, which must already be loaded
 * (torch's libgomp: RTLD_NOLOAD never loads a second runtime). True when found. */
static PyObject *gradstats_use_openmp(PyObject *self, PyObject *args) {
    const char *path;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    void *lib = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    gomp_parallel_fn parallel = lib ? (gomp_parallel_fn)dlsym(lib, "GOMP_parallel") : NULL;
    omp_int_fn thread_num = lib ? (omp_int_fn)dlsym(lib, "omp_get_thread_num") : NULL;
    omp_int_fn size = lib ? (omp_int_fn)dlsym(lib, "omp_get_num_threads") : NULL;
    if (parallel == NULL || thread_num == NULL || size == NULL) {
        if (lib) dlclose(lib);
        return Py_NewRef(Py_False);
    }
    /* the handle stays open: the runtime must outlive every later call */
    team_thread_num = thread_num;
    team_size = size;
    team_parallel = parallel;
    return Py_NewRef(Py_True);
}

static PyMethodDef methods[] = {
    {"compute", gradstats_compute, METH_VARARGS,
     "compute(ptrs, lens, dtypes, masks, out, n, stride, threads=1, min_share=131072): one-pass "
     "gradient statistics (see the comment at the top of _gradstats.c for the layout and threads)."},
    {"use_openmp", gradstats_use_openmp, METH_VARARGS,
     "use_openmp(path): run threads > 1 in the already loaded OpenMP runtime at path; True if found."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT, .m_name = "_gradstats", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__gradstats(void) { return PyModule_Create(&module); }
