/* Inner loops of resize.pyx, in C for one reason: `restrict`. Without it the
 * compiler must assume that a store through an unsigned char pointer may
 * change any float or int it has loaded (char aliases everything), so it
 * reloads the filter tables and cannot vectorise. */
#ifndef FASTFORWARD_RESIZE_KERNELS_H
#define FASTFORWARD_RESIZE_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* FF_CLONES: compile a function twice, for AVX2 and for the baseline, and pick
 * one when the module loads (GCC/Clang function multiversioning, an ELF
 * ifunc). Not "fma": an FMA rounds once where mul + add round twice, and every
 * CPU must give the same pixels. */
#if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define FF_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef FF_CLONES
#define FF_CLONES
#endif

/* out[i] = sum_k w[k] * rows[k][i] for i < n, k < used: one pass, each row
 * read once, summed in k order (so both clones round alike). The common tap
 * counts get loops of their own, which the compiler vectorises. */
#define FF_VSUM(NAME, T)                                                               \
    FF_CLONES static void NAME(const T *const *rows, const float *restrict w, int used,  \
                               ptrdiff_t n, float *restrict out) {                     \
        const T *restrict a = rows[0];                                                 \
        const float w0 = w[0];                                                         \
        if (used == 1) {                                                               \
            for (ptrdiff_t i = 0; i < n; i++) out[i] = w0 * (float)a[i];               \
            return;                                                                    \
        }                                                                              \
        const T *restrict b = rows[1];                                                 \
        const float w1 = w[1];                                                         \
        if (used == 2) {                                                               \
            for (ptrdiff_t i = 0; i < n; i++) out[i] = w0 * (float)a[i] + w1 * (float)b[i]; \
            return;                                                                    \
        }                                                                              \
        const T *restrict c = rows[2];                                                 \
        const float w2 = w[2];                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                              \
            out[i] = w0 * (float)a[i] + w1 * (float)b[i] + w2 * (float)c[i];           \
        for (int k = 3; k < used; k++) {                                               \
            const T *restrict r = rows[k];                                             \
            const float wk = w[k];                                                     \
            for (ptrdiff_t i = 0; i < n; i++) out[i] += wk * (float)r[i];              \
        }                                                                              \
    }
FF_VSUM(ff_vsum_u8, uint8_t)
FF_VSUM(ff_vsum_u16, uint16_t)
FF_VSUM(ff_vsum_f32, float)
#undef FF_VSUM

/* out[i] = src[i] as floats */
FF_CLONES static void ff_u8_to_f32(const uint8_t *restrict src, float *restrict out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) out[i] = (float)src[i];
}

/* the same for 16-bit pixels */
FF_CLONES static void ff_u16_to_f32(const uint16_t *restrict src, float *restrict out,
                                    ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) out[i] = (float)src[i];
}

/* out[i] = round(clamp(src[i], 0, 65535)), rounded half up as ff_row_to_u8 */
FF_CLONES static void ff_row_to_u16(const float *restrict src, uint16_t *restrict out,
                                    ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        int32_t v = (int32_t)(src[i] + 0.5f);
        v = v < 0 ? 0 : v;
        v = v > 65535 ? 65535 : v;
        out[i] = (uint16_t)v;
    }
}

#if defined(__SSE2__)
static inline void ff_store16(void *out, __m128i v) { _mm_storeu_si128((__m128i *)out, v); }
#endif

/* out[i] = round(clamp(src[i], 0, 255)), clamped as integers. With SSE2, 16
 * at a time: truncate (v + 0.5) to int32, then the saturating packs clamp. */
FF_CLONES static void ff_row_to_u8(const float *restrict src, uint8_t *restrict out, ptrdiff_t n) {
    ptrdiff_t i = 0;
#if defined(__SSE2__)
    const __m128 half = _mm_set1_ps(0.5f);
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_cvttps_epi32(_mm_add_ps(_mm_loadu_ps(src + i), half));
        __m128i b = _mm_cvttps_epi32(_mm_add_ps(_mm_loadu_ps(src + i + 4), half));
        __m128i c = _mm_cvttps_epi32(_mm_add_ps(_mm_loadu_ps(src + i + 8), half));
        __m128i d = _mm_cvttps_epi32(_mm_add_ps(_mm_loadu_ps(src + i + 12), half));
        __m128i ab = _mm_packs_epi32(a, b), cd = _mm_packs_epi32(c, d);
        ff_store16(out + i, _mm_packus_epi16(ab, cd));
    }
#endif
    for (; i < n; i++) {
        int32_t v = (int32_t)(src[i] + 0.5f);
        v = v < 0 ? 0 : v;
        v = v > 255 ? 255 : v;
        out[i] = (uint8_t)v;
    }
}

#if defined(__SSE2__)
/* 3 channels with 4-wide SSE: each tap is one unaligned load of 4 floats (the
 * pixel and the next one's first channel) and one multiply-add; each output
 * pixel one 4-float store whose 4th float the next pixel overwrites. Both
 * buffers have a float of slack at their end (see resize.pyx). */
#define FF_TAPS3(T)                                                              \
    for (ptrdiff_t x = 0; x < ow; x++) {                                         \
        const float *restrict p = row + (ptrdiff_t)start[x] * 3;                 \
        const float *restrict wt = weight + x * taps;                            \
        __m128 acc = _mm_mul_ps(_mm_set1_ps(wt[0]), _mm_loadu_ps(p));            \
        for (int k = 1; k < (T); k++)                                            \
            acc = _mm_add_ps(acc, _mm_mul_ps(_mm_set1_ps(wt[k]),                 \
                                             _mm_loadu_ps(p + 3 * k)));          \
        _mm_storeu_ps(out + x * 3, acc);                                         \
    }
#else
/* Output pixel x of one row, `T` taps, 3 channels: unrolled for small T. */
#define FF_TAPS3(T)                                                              \
    for (ptrdiff_t x = 0; x < ow; x++) {                                         \
        const float *restrict p = row + (ptrdiff_t)start[x] * 3;                 \
        const float *restrict wt = weight + x * taps;                            \
        float *restrict o = out + x * 3;                                         \
        float r = wt[0] * p[0], g = wt[0] * p[1], b = wt[0] * p[2];              \
        for (int k = 1; k < (T); k++) {                                          \
            r += wt[k] * p[3 * k];                                               \
            g += wt[k] * p[3 * k + 1];                                           \
            b += wt[k] * p[3 * k + 2];                                           \
        }                                                                        \
        o[0] = r;                                                                \
        o[1] = g;                                                                \
        o[2] = b;                                                                \
    }
#endif

#if defined(__SSE2__)
/* 4 channels: a pixel is one 4-float register; each tap one load, one multiply
 * and one add: the portable loop's operations, in its order, four at a time. */
#define FF_TAPS4(T)                                                              \
    for (ptrdiff_t x = 0; x < ow; x++) {                                         \
        const float *restrict p = row + (ptrdiff_t)start[x] * 4;                 \
        const float *restrict wt = weight + x * taps;                            \
        __m128 acc = _mm_mul_ps(_mm_set1_ps(wt[0]), _mm_loadu_ps(p));            \
        for (int k = 1; k < (T); k++)                                            \
            acc = _mm_add_ps(acc, _mm_mul_ps(_mm_set1_ps(wt[k]),                 \
                                             _mm_loadu_ps(p + 4 * k)));          \
        _mm_storeu_ps(out + x * 4, acc);                                         \
    }
#endif

/* 1 channel (the writer's Y, Cb and Cr planes): the portable loop's
 * operations, in its order, with a constant trip count the compiler unrolls. */
#define FF_TAPS1(T)                                                              \
    for (ptrdiff_t x = 0; x < ow; x++) {                                         \
        const float *restrict p = row + start[x];                                \
        const float *restrict wt = weight + x * taps;                            \
        float acc = wt[0] * p[0];                                                \
        for (int k = 1; k < (T); k++) acc += wt[k] * p[k];                       \
        out[x] = acc;                                                            \
    }

/* One output row (as floats) from one filtered input row of `c` channels:
 * output pixel x is sum_k weight[x*taps + k] * row[(start[x] + k)*c + ch] for
 * k < used (every pixel has `used` taps). A mirrored row is a mirrored table
 * (see resize.pyx), so nothing here knows about flips. */
FF_CLONES static void ff_hpass(const float *restrict row, const int *restrict start, int used,
                               const float *restrict weight, int taps, ptrdiff_t ow,
                               ptrdiff_t c, float *restrict out) {
    if (c == 1) {
        switch (used) {
        case 1: FF_TAPS1(1) return;  /* NOLINT: the macros are whole loops */
        case 2: FF_TAPS1(2) return;
        case 3: FF_TAPS1(3) return;
        case 4: FF_TAPS1(4) return;
        default: FF_TAPS1(used) return;
        }
    }
    if (c == 3) {
        switch (used) {  /* constant trip counts: the compiler unrolls each case */
        case 1: FF_TAPS3(1) return;  /* NOLINT: the macros are whole loops */
        case 2: FF_TAPS3(2) return;
        case 3: FF_TAPS3(3) return;
        case 4: FF_TAPS3(4) return;
        default: FF_TAPS3(used) return;
        }
    }
#if defined(__SSE2__)
    if (c == 4) {
        switch (used) {
        case 1: FF_TAPS4(1) return;
        case 2: FF_TAPS4(2) return;
        case 3: FF_TAPS4(3) return;
        case 4: FF_TAPS4(4) return;
        default: FF_TAPS4(used) return;
        }
    }
#endif
    for (ptrdiff_t x = 0; x < ow; x++) {
        const float *restrict p = row + (ptrdiff_t)start[x] * c;
        const float *restrict wt = weight + x * taps;
        float *restrict o = out + x * c;
        for (ptrdiff_t ch = 0; ch < c; ch++) {
            float acc = wt[0] * p[ch];
            for (int k = 1; k < used; k++) acc += wt[k] * p[k * c + ch];
            o[ch] = acc;
        }
    }
}

/* ---- The horizontal pass of the enlarging path, in integers.
 *
 * Each output pixel's taps are whole numbers summing to FF_QONE (see
 * _quantize in resize.pyx). The pass reads the uint8 row as it is (no float
 * copy of it) and writes each channel's exact sum  sum_k q[k] * pixel[k]  as a
 * float: at most 255 * FF_QONE < 2^24, so the float holds it exactly, and
 * every CPU, SIMD or not, gives the same values. The vertical step divides by
 * FF_QONE (its weights are pre-scaled). */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#define FF_QBITS 14
#define FF_QONE (1 << FF_QBITS)
/* The integer pass serves filters of at most this many taps (enlarging, or
 * shrinking under 3x). Rounding moves each tap by at most 1/2, and the largest
 * (at least FF_QONE / 4) takes the sum's error (at most 2): so no tap goes
 * negative and a pixel is within 0.1 level of exact. Wider filters stay float. */
#define FF_QMAX_TAPS 4

#if defined(__SSE2__)
static inline __m128i ff_load4(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm_cvtsi32_si128(v);
}

/* ff_hpass_q for 4 channels (SSE2, any x86-64): for each pair of taps, the two
 * pixels' bytes interleaved and widened to int16 [a0 b0 a1 b1 a2 b2 a3 b3], one
 * pmaddwd with [q0 q1] repeated gives the pair's four channel sums as int32;
 * an odd last tap is paired with 0. Exact integer sums, as the portable loop's. */
static void ff_hpass_q4_sse2(const uint8_t *restrict row, const int *restrict start, int used,
                             const int16_t *restrict q, int taps, ptrdiff_t ow,
                             float *restrict out) {
    const __m128i zero = _mm_setzero_si128();
    for (ptrdiff_t x = 0; x < ow; x++) {
        const uint8_t *restrict p = row + (ptrdiff_t)start[x] * 4;
        const int16_t *restrict wt = q + x * taps;
        __m128i acc = zero;
        int k = 0;
        for (; k + 2 <= used; k += 2) {
            __m128i pair = _mm_unpacklo_epi8(ff_load4(p + 4 * k), ff_load4(p + 4 * k + 4));
            __m128i w = _mm_set1_epi32((int32_t)((uint32_t)(uint16_t)wt[k] |
                                                 ((uint32_t)(uint16_t)wt[k + 1] << 16)));
            acc = _mm_add_epi32(acc, _mm_madd_epi16(_mm_unpacklo_epi8(pair, zero), w));
        }
        if (k < used) {
            __m128i one = _mm_unpacklo_epi8(ff_load4(p + 4 * k), zero);
            __m128i w = _mm_set1_epi32((int32_t)(uint16_t)wt[k]);
            acc = _mm_add_epi32(acc, _mm_madd_epi16(_mm_unpacklo_epi16(one, zero), w));
        }
        _mm_storeu_ps(out + x * 4, _mm_cvtepi32_ps(acc));
    }
}
#endif

FF_CLONES static void ff_hpass_q(const uint8_t *restrict row, const int *restrict start, int used,
                                 const int16_t *restrict q, int taps, ptrdiff_t ow, ptrdiff_t c,
                                 float *restrict out) {
#if defined(__SSE2__)
    if (c == 4) {
        ff_hpass_q4_sse2(row, start, used, q, taps, ow, out);
        return;
    }
#endif
    for (ptrdiff_t x = 0; x < ow; x++) {
        const uint8_t *restrict p = row + (ptrdiff_t)start[x] * c;
        const int16_t *restrict wt = q + x * taps;
        for (ptrdiff_t ch = 0; ch < c; ch++) {
            int32_t acc = 0;
            for (int k = 0; k < used; k++) acc += (int32_t)wt[k] * p[k * c + ch];
            out[x * c + ch] = (float)acc;
        }
    }
}

/* The table ff_hpass_q3_avx2 reads: for output pixels 2i and 2i + 1 and taps
 * 2j and 2j + 1, 16 int16 at qwide[(i * pairs + j) * 16]: pixel 2i's two taps
 * three times over, then 0, 0, then the same for pixel 2i + 1 (0 past the end
 * and for a tap past `used`). (ow + 1) / 2 * pairs * 16 int16, pairs =
 * (used + 1) / 2. */
static inline void ff_widen_qtaps(const int16_t *restrict q, int taps, int used, ptrdiff_t ow,
                                  int16_t *restrict qwide) {
    const int pairs = (used + 1) / 2;
    for (ptrdiff_t i = 0; i < (ow + 1) / 2 * pairs * 16; i++) qwide[i] = 0;
    for (ptrdiff_t x = 0; x < ow; x++)
        for (int k = 0; k < used; k++)
            for (int ch = 0; ch < 3; ch++)
                qwide[((x / 2) * pairs + k / 2) * 16 + (x % 2) * 8 + ch * 2 + k % 2] =
                    q[x * taps + k];
}

#if defined(__x86_64__) && defined(__GNUC__)
/* ff_hpass_q for 3 channels, two output pixels per register. For each pair of
 * taps, 16 bytes are read at each pixel's first tap (6 are used), spread into
 * int16 [r0 r1 g0 g1 b0 b1 0 0] by one shuffle and multiplied by the taps with
 * pmaddwd: the channel sums of the pair, as int32. So up to 13 bytes past the
 * last pixel's taps are read: the caller makes sure they are there. */
#define FF_QPAIR(P)                                                                  \
    for (; x + 2 <= ow; x += 2) {                                                    \
        const uint8_t *restrict p0 = row + (ptrdiff_t)start[x] * 3;                  \
        const uint8_t *restrict p1 = row + (ptrdiff_t)start[x + 1] * 3;              \
        const __m256i *restrict wt = (const __m256i *)(qwide + (x / 2) * (P) * 16);  \
        __m256i acc = _mm256_madd_epi16(                                             \
            _mm256_shuffle_epi8(_mm256_loadu2_m128i((const __m128i *)p1,             \
                                                    (const __m128i *)p0), spread),   \
            _mm256_loadu_si256(wt));                                                 \
        for (int j = 1; j < (P); j++)                                                \
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(                           \
                _mm256_shuffle_epi8(_mm256_loadu2_m128i((const __m128i *)(p1 + 6 * j), \
                                                        (const __m128i *)(p0 + 6 * j)), \
                                    spread),                                         \
                _mm256_loadu_si256(wt + j)));                                        \
        __m256 f = _mm256_cvtepi32_ps(acc);                                          \
        _mm_storeu_ps(out + x * 3, _mm256_castps256_ps128(f));                       \
        _mm_storeu_ps(out + x * 3 + 3, _mm256_extractf128_ps(f, 1));                 \
    }

__attribute__((target("avx2")))
static void ff_hpass_q3_avx2(const uint8_t *restrict row, const int *restrict start, int used,
                             const int16_t *restrict qwide, ptrdiff_t ow, float *restrict out) {
    const int pairs = (used + 1) / 2;
    const __m256i spread = _mm256_setr_epi8(
        0, -128, 3, -128, 1, -128, 4, -128, 2, -128, 5, -128, -128, -128, -128, -128,
        0, -128, 3, -128, 1, -128, 4, -128, 2, -128, 5, -128, -128, -128, -128, -128);
    ptrdiff_t x = 0;
    switch (pairs) { /* constant trip counts for the common cases: unrolled */
    case 1: FF_QPAIR(1) break;
    case 2: FF_QPAIR(2) break;
    default: FF_QPAIR(pairs) break;
    }
    if (x < ow) { /* an odd last pixel: the low halves */
        const uint8_t *restrict p = row + (ptrdiff_t)start[x] * 3;
        const int16_t *restrict wt = qwide + (x / 2) * pairs * 16;
        __m128i acc = _mm_setzero_si128();
        for (int j = 0; j < pairs; j++) {
            __m128i v = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 6 * j)),
                                         _mm256_castsi256_si128(spread));
            acc = _mm_add_epi32(acc, _mm_madd_epi16(v, _mm_loadu_si128((const __m128i *)(wt + 16 * j))));
        }
        _mm_storeu_ps(out + x * 3, _mm_cvtepi32_ps(acc));
    }
}
#undef FF_QPAIR
#endif

/* Ask for the n bytes at p to be brought into the cache (no-op elsewhere). */
static inline void ff_prefetch(const void *p, ptrdiff_t n) {
#if defined(__GNUC__)
    for (ptrdiff_t i = 0; i < n; i += 64) __builtin_prefetch((const char *)p + i, 0, 3);
#else
    (void)p; (void)n;
#endif
}

/* The integer horizontal pass: the AVX2 form for 3 channels where it runs
 * (qwide != NULL), else the portable one. The same floats either way. */
static inline void ff_hpass_q_any(const uint8_t *restrict row, const int *restrict start,
                                  int used, const int16_t *restrict q,
                                  const int16_t *restrict qwide, int taps, ptrdiff_t ow,
                                  ptrdiff_t c, float *restrict out) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (qwide != NULL) {
        ff_hpass_q3_avx2(row, start, used, qwide, ow, out);
        return;
    }
#endif
    ff_hpass_q(row, start, used, q, taps, ow, c, out);
}

/* ---- float outputs: the pixel value (rounded, clamped to 0..hi: exactly what a
 * uint8 output, hi = 255, or a uint16 one, hi = 65535, would hold), then an
 * optional per-channel affine x * mul[c] + add[c]. So a fused conversion or
 * normalisation gives what the separate steps give. */

static inline float ff_pixel_to(float v, int32_t hi) {
    int32_t i = (int32_t)(v + 0.5f);
    return (float)(i < 0 ? 0 : (i > hi ? hi : i));
}

static inline float ff_pixel(float v) { return ff_pixel_to(v, 255); }

/* Whether the affine step of 3 channels is x * 1 + 0 == x (no normalisation):
 * then the fast paths skip it, giving the same values. */
static inline int ff_is_plain(const float *mul, const float *add) {
    return mul[0] == 1.0f && mul[1] == 1.0f && mul[2] == 1.0f && add[0] == 0.0f &&
           add[1] == 0.0f && add[2] == 0.0f;
}

/* The same for `c` channels. */
static inline int ff_is_plain_n(const float *mul, const float *add, ptrdiff_t c) {
    for (ptrdiff_t k = 0; k < c; k++)
        if (mul[k] != 1.0f || add[k] != 0.0f) return 0;
    return 1;
}

/* A pattern of 12 floats repeats every pixel for 1, 2, 3, 4, 6 or 12 channels
 * (48 for 8 and 16): with it, the loop has no per-element modulo and
 * vectorises. Other channel counts go pixel by pixel. */
FF_CLONES static void ff_row_to_f32(const float *restrict src, float *restrict out, ptrdiff_t n,
                                    ptrdiff_t c, const float *restrict mul,
                                    const float *restrict add, int32_t hi) {
    float m[48], a[48];
    for (int k = 0; k < 48; k++) {
        m[k] = mul[k % c];
        a[k] = add[k % c];
    }
    ptrdiff_t i = 0;
    if (12 % c == 0) {
        for (; i + 12 <= n; i += 12)
            for (int k = 0; k < 12; k++) out[i + k] = ff_pixel_to(src[i + k], hi) * m[k] + a[k];
    } else if (48 % c == 0) {
        for (; i + 48 <= n; i += 48)
            for (int k = 0; k < 48; k++) out[i + k] = ff_pixel_to(src[i + k], hi) * m[k] + a[k];
    } else {
        for (; i + c <= n; i += c)
            for (ptrdiff_t k = 0; k < c; k++)
                out[i + k] = ff_pixel_to(src[i + k], hi) * mul[k] + add[k];
    }
    for (; i < n; i++) out[i] = ff_pixel_to(src[i], hi) * mul[i % c] + add[i % c];
}

/* IEEE half from float, round to nearest even (software, any CPU). */
static inline uint16_t ff_f32_to_f16_soft(float value) {
    union { float f; uint32_t u; } v = {value};
    uint32_t x = v.u, sign = (x >> 16) & 0x8000u, mant;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    if (((x >> 23) & 0xff) == 0xff) /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | ((x & 0x7fffffu) ? 0x200u : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant = (x & 0x7fffffu) | 0x800000u;
        uint32_t shift = (uint32_t)(14 - exp), half = 1u << (shift - 1);
        uint32_t rounded = (mant + half - 1 + ((mant >> shift) & 1)) >> shift;
        return (uint16_t)(sign | rounded);
    }
    mant = x & 0x7fffffu;
    uint32_t out = sign | ((uint32_t)exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (out & 1u))) out++; /* may carry into exp: fine */
    return (uint16_t)out;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* ff_pixel on 8 floats, in functions that define `half`, `lo` and `hi` */
#define FF_PIX8(v) _mm256_min_ps(_mm256_max_ps(_mm256_floor_ps(_mm256_add_ps((v), half)), lo), hi)

/* one float to IEEE half, rounded to nearest even */
__attribute__((target("avx,f16c")))
static inline uint16_t ff_half_one(float v) {
    return (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(v), _MM_FROUND_TO_NEAREST_INT), 0);
}

__attribute__((target("avx,f16c")))
static void ff_row_to_f16_f16c(const float *restrict src, uint16_t *restrict out, ptrdiff_t n,
                               ptrdiff_t c, const float *restrict mul,
                               const float *restrict add, int32_t hi_value) {
    ptrdiff_t i = 0;
    if (c == 3 && hi_value == 255) {
        /* 24 floats = 8 pixels: three registers with the channel pattern repeating */
        float m[24], a[24];
        for (int k = 0; k < 24; k++) { m[k] = mul[k % 3]; a[k] = add[k % 3]; }
        __m256 m0 = _mm256_loadu_ps(m), m1 = _mm256_loadu_ps(m + 8), m2 = _mm256_loadu_ps(m + 16);
        __m256 a0 = _mm256_loadu_ps(a), a1 = _mm256_loadu_ps(a + 8), a2 = _mm256_loadu_ps(a + 16);
        const __m256 lo = _mm256_set1_ps(0.0f), hi = _mm256_set1_ps(255.0f);
        const __m256 half = _mm256_set1_ps(0.5f);
        const int affine = !ff_is_plain(mul, add);
#define FF_PIX(p) FF_PIX8(_mm256_loadu_ps(p))
#define FF_HALF(v) _mm256_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT)
        if (affine) {
            for (; i + 24 <= n; i += 24) {
                __m256 v0 = _mm256_add_ps(_mm256_mul_ps(FF_PIX(src + i), m0), a0);
                __m256 v1 = _mm256_add_ps(_mm256_mul_ps(FF_PIX(src + i + 8), m1), a1);
                __m256 v2 = _mm256_add_ps(_mm256_mul_ps(FF_PIX(src + i + 16), m2), a2);
                ff_store16(out + i, FF_HALF(v0));
                ff_store16(out + i + 8, FF_HALF(v1));
                ff_store16(out + i + 16, FF_HALF(v2));
            }
        } else {
            for (; i + 8 <= n; i += 8) ff_store16(out + i, FF_HALF(FF_PIX(src + i)));
        }
    } else if (48 % c == 0) {
        /* any other channel count dividing 48 (and uint16 pixels): 8 floats at a
         * time with the channel pattern of 48 floats */
        float m[48], a[48];
        for (int k = 0; k < 48; k++) { m[k] = mul[k % c]; a[k] = add[k % c]; }
        const __m256 lo = _mm256_set1_ps(0.0f), hi = _mm256_set1_ps((float)hi_value);
        const __m256 half = _mm256_set1_ps(0.5f);
        for (; i + 48 <= n; i += 48)
            for (int k = 0; k < 48; k += 8)
                ff_store16(out + i + k, FF_HALF(_mm256_add_ps(
                    _mm256_mul_ps(FF_PIX(src + i + k), _mm256_loadu_ps(m + k)),
                    _mm256_loadu_ps(a + k))));
    } else {
        for (; i + c <= n; i += c)
            for (ptrdiff_t k = 0; k < c; k++)
                out[i + k] = ff_half_one(ff_pixel_to(src[i + k], hi_value) * mul[k] + add[k]);
    }
#undef FF_HALF
#undef FF_PIX
    for (; i < n; i++)
        out[i] = ff_half_one(ff_pixel_to(src[i], hi_value) * mul[i % c] + add[i % c]);
}
#endif


/* ---- AVX2 forms of the hottest steps, chosen at run time (ff_has_avx2). They
 * do the same float operations in the same order as the portable code, so
 * the pixels are the same on every CPU. */

static int ff_avx2 = -1;
static int ff_has_f16c = -1;

/* For tests: 0 forces the portable code (every explicit SIMD path off), 1
 * goes back to what the CPU supports. */
static inline void ff_set_simd(int on) {
    ff_avx2 = on ? -1 : 0;
    ff_has_f16c = on ? -1 : 0;
}

static inline int ff_has_avx2(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (ff_avx2 < 0) {
        __builtin_cpu_init();
        ff_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    return ff_avx2;
#else
    return 0;
#endif
}

#if defined(__x86_64__) && defined(__GNUC__)
/* out[i] = src[i] as floats, 8 at a time */
__attribute__((target("avx2")))
static void ff_u8_to_f32_avx2(const uint8_t *restrict src, float *restrict out, ptrdiff_t n) {
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(src + i)));
        _mm256_storeu_ps(out + i, _mm256_cvtepi32_ps(v));
    }
    for (; i < n; i++) out[i] = (float)src[i];
}

/* Two filtered rows combined and written out in one pass (the vertical step
 * when enlarging): out[i] = emit(w0 * a[i] + w1 * b[i]), as ff_vsum_f32 then
 * the ff_row_to_* of the output type would give, without the float row. */
#define FF_V2(i) _mm256_add_ps(_mm256_mul_ps(w0v, _mm256_loadu_ps(a + (i))),                 \
                               _mm256_mul_ps(w1v, _mm256_loadu_ps(b + (i))))

__attribute__((target("avx2")))
static void ff_vsum2_u8_avx2(const float *restrict a, const float *restrict b, float w0,
                             float w1, ptrdiff_t n, uint8_t *restrict out) {
    const __m256 w0v = _mm256_set1_ps(w0), w1v = _mm256_set1_ps(w1), half = _mm256_set1_ps(0.5f);
    ptrdiff_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i p0 = _mm256_cvttps_epi32(_mm256_add_ps(FF_V2(i), half));
        __m256i p1 = _mm256_cvttps_epi32(_mm256_add_ps(FF_V2(i + 8), half));
        __m256i p2 = _mm256_cvttps_epi32(_mm256_add_ps(FF_V2(i + 16), half));
        __m256i p3 = _mm256_cvttps_epi32(_mm256_add_ps(FF_V2(i + 24), half));
        /* the packs work within 128-bit lanes: put the 8-byte groups back in order */
        __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(p0, p1), _mm256_packs_epi32(p2, p3));
        bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(out + i), bytes);
    }
    for (; i < n; i++) {
        int32_t v = (int32_t)((w0 * a[i] + w1 * b[i]) + 0.5f);
        out[i] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
}

/* float16 or float32 out (c dividing 24: 1, 2, 3, 4, 6, 8, 12): the pixel value,
 * then x * mul + add */
__attribute__((target("avx2,f16c")))
static void ff_vsum2_float_avx2(const float *restrict a, const float *restrict b, float w0,
                                float w1, ptrdiff_t n, ptrdiff_t c, const float *restrict mul,
                                const float *restrict add, int half_out, int32_t hi,
                                void *restrict out) {
    const __m256 w0v = _mm256_set1_ps(w0), w1v = _mm256_set1_ps(w1), half = _mm256_set1_ps(0.5f);
    float m[24], d[24];
    for (int k = 0; k < 24; k++) { m[k] = mul[k % c]; d[k] = add[k % c]; }
    const int affine = !ff_is_plain_n(mul, add, c);
    uint16_t *restrict out16 = (uint16_t *)out;
    float *restrict out32 = (float *)out;
    ptrdiff_t i = 0;
    for (; i + 24 <= n; i += 24) {
        for (int j = 0; j < 24; j += 8) {
            /* ff_pixel without its clamp, which would change nothing: this
             * step only runs after a horizontal pass whose taps are >= 0
             * (float, or integer with at most FF_QMAX_TAPS), so the rows and
             * the weights are >= 0, and the sum is a weighted mean of pixels
             * (to a float's rounding): v + 0.5 is in [0.5, hi + 1) */
            __m256 v = _mm256_floor_ps(_mm256_add_ps(FF_V2(i + j), half));
            if (affine)
                v = _mm256_add_ps(_mm256_mul_ps(v, _mm256_loadu_ps(m + j)), _mm256_loadu_ps(d + j));
            if (half_out)
                _mm_storeu_si128((__m128i *)(out16 + i + j),
                                 _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
            else
                _mm256_storeu_ps(out32 + i + j, v);
        }
    }
    for (; i < n; i++) {
        float v = ff_pixel_to(w0 * a[i] + w1 * b[i], hi) * mul[i % c] + add[i % c];
        if (half_out)
            out16[i] = ff_half_one(v);
        else
            out32[i] = v;
    }
}
#undef FF_PIX8
#undef FF_V2

/* The horizontal pass for 3 channels, two output pixels per 8-float register:
 * pixel x in the low half, x + 1 in the high half. `wide` holds each pair's
 * taps spread out (see ff_widen_taps), so a tap costs one load per operand.
 * Same operations, same order as FF_TAPS3. */
#define FF_PAIR(T)                                                                 \
    for (; x + 2 <= ow; x += 2) {                                                  \
        const float *restrict p0 = row + (ptrdiff_t)start[x] * 3;                  \
        const float *restrict p1 = row + (ptrdiff_t)start[x + 1] * 3;              \
        const float *restrict wt = wide + (x / 2) * (T) * 8;                       \
        __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(wt), _mm256_loadu2_m128(p1, p0)); \
        for (int k = 1; k < (T); k++)                                              \
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(wt + 8 * k),     \
                                                   _mm256_loadu2_m128(p1 + 3 * k,   \
                                                                      p0 + 3 * k))); \
        _mm_storeu_ps(out + x * 3, _mm256_castps256_ps128(acc));                   \
        _mm_storeu_ps(out + x * 3 + 3, _mm256_extractf128_ps(acc, 1));             \
    }

__attribute__((target("avx2")))
static void ff_hpass3_avx2(const float *restrict row, const int *restrict start, int used,
                           const float *restrict wide, ptrdiff_t ow, float *restrict out) {
    ptrdiff_t x = 0;
    switch (used) {
    case 1: FF_PAIR(1) break;
    case 2: FF_PAIR(2) break;
    case 3: FF_PAIR(3) break;
    case 4: FF_PAIR(4) break;
    default: FF_PAIR(used) break;
    }
    if (x < ow) { /* an odd last pixel: the low halves */
        const float *restrict p = row + (ptrdiff_t)start[x] * 3;
        const float *restrict wt = wide + (x / 2) * used * 8;
        __m128 acc = _mm_mul_ps(_mm_loadu_ps(wt), _mm_loadu_ps(p));
        for (int k = 1; k < used; k++)
            acc = _mm_add_ps(acc, _mm_mul_ps(_mm_loadu_ps(wt + 8 * k), _mm_loadu_ps(p + 3 * k)));
        _mm_storeu_ps(out + x * 3, acc);
    }
}
#undef FF_PAIR
#endif

/* The table ff_hpass3_avx2 reads: for output pixels 2q and 2q + 1 and tap k,
 * 8 floats at wide[(q * used + k) * 8]: pixel 2q's weight 4 times, then pixel
 * 2q + 1's (0 past the end). (ow + 1) / 2 * used * 8 floats. */
static inline void ff_widen_taps(const float *restrict weight, int taps, int used, ptrdiff_t ow,
                                 float *restrict wide) {
    for (ptrdiff_t x = 0; x < ow; x++)
        for (int k = 0; k < used; k++)
            for (int l = 0; l < 4; l++)
                wide[((x / 2) * used + k) * 8 + (x % 2) * 4 + l] = weight[x * taps + k];
    if (ow % 2)
        for (int k = 0; k < used; k++)
            for (int l = 4; l < 8; l++) wide[((ow / 2) * used + k) * 8 + l] = 0.0f;
}

/* The horizontal pass: the AVX2 pair form for 3 channels where it runs. */
static inline void ff_hpass_any(const float *restrict row, const int *restrict start, int used,
                                const float *restrict weight, const float *restrict wide,
                                int taps, ptrdiff_t ow, ptrdiff_t c, float *restrict out) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (wide != NULL) {
        ff_hpass3_avx2(row, start, used, wide, ow, out);
        return;
    }
#endif
    ff_hpass(row, start, used, weight, taps, ow, c, out);
}

/* The fused vertical step, where there is one: 1 if it wrote the row. Kinds as
 * resize.pyx's: 0 uint8, 1 float16, 2 float32 (3, uint16, has none); `hi` the
 * largest pixel value (255 or 65535). */
static inline int ff_vsum2_emit(const float *a, const float *b, float w0, float w1, ptrdiff_t n,
                                ptrdiff_t c, int kind, const float *mul, const float *add,
                                int32_t hi, void *out) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (!ff_has_avx2()) return 0;
    if (kind == 0) {
        ff_vsum2_u8_avx2(a, b, w0, w1, n, (uint8_t *)out);
        return 1;
    }
    if (24 % c == 0 && (kind == 1 || kind == 2)) {
        ff_vsum2_float_avx2(a, b, w0, w1, n, c, mul, add, kind == 1, hi, out);
        return 1;
    }
#endif
    (void)a; (void)b; (void)w0; (void)w1; (void)n; (void)c; (void)kind; (void)mul; (void)add;
    (void)hi; (void)out;
    return 0;
}

static inline void ff_u8_to_f32_any(const uint8_t *restrict src, float *restrict out,
                                    ptrdiff_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (ff_has_avx2()) {
        ff_u8_to_f32_avx2(src, out, n);
        return;
    }
#endif
    ff_u8_to_f32(src, out, n);
}

static inline void ff_row_to_f16(const float *restrict src, uint16_t *restrict out, ptrdiff_t n,
                                 ptrdiff_t c, const float *restrict mul,
                                 const float *restrict add, int32_t hi) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (ff_has_f16c < 0) {
        __builtin_cpu_init();
        ff_has_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
    }
    if (ff_has_f16c) {
        ff_row_to_f16_f16c(src, out, n, c, mul, add, hi);
        return;
    }
#endif
    for (ptrdiff_t i = 0; i < n; i++)
        out[i] = ff_f32_to_f16_soft(ff_pixel_to(src[i], hi) * mul[i % c] + add[i % c]);
}

#endif
