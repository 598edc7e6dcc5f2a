/* The mixer's inner loop (synth.voices.VoiceBank.mix), compiled: one pass over each voice's samples
 * into double accumulators, instead of numpy's row copies, envelope passes and a matrix product.
 *
 * Row v of the mix is either a row numpy made (mode 0: interpolated, or with a ramp numpy computes)
 * or read here straight from the note bank (mode 1): sample n is bank[src + n] for z0 <= n < z1 and
 * 0 elsewhere, times rt[rs + n] * env0 when the voice is in a tabled release (tab 1). A looping voice
 * that reaches its loop end at frame seam (< f) jumps back by the loop length loop_len there, and again
 * every loop_len frames after: the samples numpy's interpolation reads at those whole positions. Each output
 * column c is sum over v of gains[c][v] * row_v[n], accumulated in row order: the same
 * values whatever the block, since every sample's arithmetic depends on its own index only. A gain of
 * exactly 0 (a send turned down, a hard pan) skips its column: adding g * w = 0 changes no sum. Built with
 * -ffp-contract=off: acc + g * w rounds twice on every machine, never fused by one compiler and not
 * another. Columns 0-1 go to `out` (float32[f, 2]), 2-5 (when nout is 6) to `sends` (float32[f, 4]);
 * `acc` has a seventh row of scratch.
 *
 * Called through ctypes.PyDLL (`mix_packed`) (the GIL stays held: the audio callback never waits to take it back).
 * It allocates nothing. A module init makes the file importable, so that setuptools builds it and
 * Python finds it; the module itself has no functions.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* An AVX2 build beside the baseline one, chosen at load time: twice the doubles per instruction, and
 * the same values (no FMA: the products and sums round as in the baseline build). */
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

/* scratch[n] for n in [n0, n1): the bank row b (already shifted back by any loop jumps), times the
 * release table r from frame mid on its last value, times e0, when tab; else the row itself. */
static inline void bank_row(double *scratch, const float *b, int64_t n0, int64_t n1, int64_t tab,
                            const double *r, int64_t mid, double rlast, double e0)
{
    if (!tab) {
        for (int64_t n = n0; n < n1; n++)
            scratch[n] = (double)b[n];
        return;
    }
    int64_t m = mid < n0 ? n0 : (mid > n1 ? n1 : mid);
    for (int64_t n = n0; n < m; n++)
        scratch[n] = (double)b[n] * (r[n] * e0);
    for (int64_t n = m; n < n1; n++)
        scratch[n] = (double)b[n] * (rlast * e0);
}

CLONES
void mix_rows(int64_t nv, int64_t f, const float *bank, const double *ww, int64_t ww_stride,
              const int64_t *mode, const int64_t *src, const int64_t *z0, const int64_t *z1,
              const int64_t *tab, const int64_t *rs, const double *env0, const double *rt, int64_t rt_len,
              const double *gains, int64_t g_stride, int64_t nout, double *acc, int64_t acc_stride,
              float *out, float *sends, const int64_t *seam, const int64_t *loop_len)
{
    double *scratch = acc + 6 * acc_stride;    /* row 6: a bank row, widened (and enveloped) */
    for (int64_t c = 0; c < nout; c++) {
        double *a = acc + c * acc_stride;
        for (int64_t n = 0; n < f; n++)
            a[n] = 0.0;
    }
    for (int64_t v = 0; v < nv; v++) {
        const double *w;
        int64_t lo = 0, hi = f;
        if (mode[v] == 0) {
            w = ww + v * ww_stride;
        } else {
            /* Silent frames would add g * 0.0, as numpy's zeroed row does: a no-op on the sum. */
            lo = z0[v] > 0 ? z0[v] : 0;
            hi = z1[v] < f ? z1[v] : f;
            const float *b = bank + src[v];
            const double *r = rt + (tab[v] ? rs[v] : 0);
            const int64_t mid = tab[v] ? rt_len - rs[v] : 0;   /* past the table's end, its last value */
            const double rlast = rt_len ? rt[rt_len - 1] : 0.0, e0 = tab[v] ? env0[v] : 0.0;
            const int64_t s0 = seam[v], len = loop_len[v];
            for (int64_t n = lo; n < hi;) {
                int64_t end = hi, back = 0;
                if (n >= s0) {                      /* k loop jumps behind: read k lengths back */
                    int64_t k = (n - s0) / len + 1;
                    back = k * len;
                    end = s0 + back;
                } else if (s0 < hi) {
                    end = s0;
                }
                if (end > hi)
                    end = hi;
                bank_row(scratch, b - back, n, end, tab[v], r, mid, rlast, e0);
                n = end;
            }
            w = scratch;
        }
        for (int64_t c = 0; c < nout; c++) {
            const double g = gains[c * g_stride + v];
            if (g == 0.0)
                continue;                           /* a send at 0 (CC93's default): adds only zeros */
            double *a = acc + c * acc_stride;
            for (int64_t n = lo; n < hi; n++)
                a[n] = a[n] + g * w[n];
        }
    }
    for (int64_t n = 0; n < f; n++) {
        out[2 * n] = (float)acc[n];
        out[2 * n + 1] = (float)acc[acc_stride + n];
    }
    for (int64_t c = 2; c < nout; c++) {
        const double *a = acc + c * acc_stride;
        for (int64_t n = 0; n < f; n++)
            sends[4 * n + c - 2] = (float)a[n];
    }
}

/* The same, its arguments packed in one int64 array (addresses as integers), in mix_rows's order:
 * ctypes converts one argument per call instead of 23 (each conversion allocates). */
void mix_packed(const int64_t *a)
{
    mix_rows(a[0], a[1], (const float *)a[2], (const double *)a[3], a[4], (const int64_t *)a[5],
             (const int64_t *)a[6], (const int64_t *)a[7], (const int64_t *)a[8], (const int64_t *)a[9],
             (const int64_t *)a[10], (const double *)a[11], (const double *)a[12], a[13], (const double *)a[14],
             a[15], a[16], (double *)a[17], a[18], (float *)a[19], (float *)a[20], (const int64_t *)a[21],
             (const int64_t *)a[22]);
}

static struct PyModuleDef mixc_module = {PyModuleDef_HEAD_INIT, "_mixc", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__mixc(void) { return PyModule_Create(&mixc_module); }
