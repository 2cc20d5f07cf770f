/* The operations of the augmentation policies (augment.pyx), each on one uint8
 * RGB image (rows of w pixels of 3 bytes, any row stride), from `src` into
 * `dst`, which never overlap.
 *
 * Arithmetic follows torchvision.transforms.v2.functional on uint8 tensors, as
 * torch computes it on a CPU: float32 products and sums, rounded after each
 * step, except where torch's vectorised kernels use a fused multiply-add
 * (`a.add_(b, alpha=k)` is fma(b, k, a), one rounding). A fused step is
 * computed here in double and rounded once to float: its products (an 8-bit
 * integer times a float) and sums are exact in double for the values that
 * occur, so the one rounding is the fma's. The whole extension is compiled
 * with -ffp-contract=off, so no other step is fused, on any CPU.
 *
 * Rounding: float to uint8 truncates after clamping to 0..255 (torch's
 * `.to(uint8)` after `clamp_`), except after interpolation, which rounds half
 * to even first (`round_()`), as torchvision's grid transforms do.
 *
 * Loops index with ptrdiff_t: Python builds extensions with -fwrapv, under
 * which `3 * x` with an int x may wrap and the compiler will not vectorise. */
#ifndef FASTFORWARD_AUGMENT_KERNELS_H
#define FASTFORWARD_AUGMENT_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* Compile the hot loops twice, for AVX2 and the baseline, picked at load time
 * (as resize_kernels.h does). Not "fma": each CPU must round alike. */
#if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define FF_AUG_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef FF_AUG_CLONES
#define FF_AUG_CLONES
#endif

/* Operation codes (augment.pyx's OPS, in the same order). */
enum {
    FF_AUG_NONE = -1,        /* nothing: the image goes on unchanged */
    FF_AUG_COPY = 0,         /* identity */
    FF_AUG_AFFINE = 1,       /* p[0..5]: inverse matrix in centred coordinates */
    FF_AUG_SHIFT = 2,        /* p[0], p[1]: whole-pixel translation (x, y) */
    FF_AUG_ROT90 = 3,        /* p[0]: quarter turns counter-clockwise (1, 2, 3) */
    FF_AUG_BRIGHTNESS = 4,   /* p[0]: factor */
    FF_AUG_SATURATION = 5,   /* p[0]: factor */
    FF_AUG_CONTRAST = 6,     /* p[0]: factor */
    FF_AUG_SHARPNESS = 7,    /* p[0]: factor */
    FF_AUG_POSTERIZE = 8,    /* p[0]: bits kept, 0..8 */
    FF_AUG_SOLARIZE = 9,     /* p[0]: threshold */
    FF_AUG_AUTOCONTRAST = 10,
    FF_AUG_EQUALIZE = 11,
    FF_AUG_INVERT = 12,
    FF_AUG_COUNT = 13
};

/* torchvision's gray weights, as the float32 values torch multiplies by */
#define FF_AUG_GRAY_R ((double)0.2989f)
#define FF_AUG_GRAY_G ((double)0.587f)
#define FF_AUG_GRAY_B ((double)0.114f)

/* Round half to even, for |x| < 2^22, in the default rounding mode; as
 * torch's round_() and nearbyint, without a libm call. */
static inline float ff_aug_rintf(float x) {
    const float big = 12582912.0f; /* 2^23 + 2^22 */
    return (x + big) - big;
}
/* floor for |x| < 2^31 */
static inline float ff_aug_floorf(float x) {
    int32_t i = (int32_t)x;
    return (float)(i - (x < (float)i));
}
/* clamp to 0..255, then truncate (torch's clamp_(0, 255).to(uint8)) */
static inline uint8_t ff_aug_u8(float v) {
    v = v > 0.0f ? v : 0.0f;
    v = v < 255.0f ? v : 255.0f;
    return (uint8_t)(int32_t)v;
}

/* Rows that have a vector form for some CPUs (brightness and the 256-entry
 * tables in AVX2 / AVX-512 VBMI; the conversion after a policy in AVX2 and
 * F16C) check the CPU once; each form computes the portable code's values
 * exactly. ff_aug_portable (set by augment.pyx's tests) turns them off. */
static int ff_aug_portable = 0;

static void ff_aug_set_portable(int on) { ff_aug_portable = on != 0; }

#if defined(__x86_64__) && defined(__linux__)
#include <immintrin.h>
#define FF_AUG_X86 1
static int ff_aug_level = -1;

/* 0: portable code only; 1: AVX2 and F16C; 2: also AVX-512 F, BW and VBMI */
static inline int ff_aug_cpu(void) {
    if (ff_aug_level < 0) {
        __builtin_cpu_init();
        int level = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
        if (level && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vbmi"))
            level = 2;
        ff_aug_level = level;
    }
    return ff_aug_portable ? 0 : ff_aug_level;
}

/* 8 uint8 values as 8 floats */
__attribute__((target("avx2")))
static inline __m256 ff_aug_load8(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* brightness, 32 values at a time: the same product, clamp and truncation */
__attribute__((target("avx2")))
static void ff_aug_scale_row_avx2(const uint8_t *restrict s, ptrdiff_t n, float f,
                                  uint8_t *restrict d) {
    const __m256 vf = _mm256_set1_ps(f), lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(255.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    ptrdiff_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i q[4];
        for (int j = 0; j < 4; j++) {
            /* max first: NaN (never produced) would give 0 as the portable code */
            __m256 v = _mm256_mul_ps(ff_aug_load8(s + i + 8 * j), vf);
            q[j] = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
        }
        const __m256i x = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]),
                                              _mm256_packus_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(d + i), _mm256_permutevar8x32_epi32(x, order));
    }
    for (; i < n; i++) d[i] = ff_aug_u8((float)s[i] * f);
}

/* d[i] = lut[c * 256 + s[i]], c = i % 3, 64 values at a time: each channel's
 * table is four registers, looked up two 128-entry halves at a time and
 * merged by the value's top bit, then the channels merged by position */
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
static void ff_aug_lut_row_vbmi(const uint8_t *restrict s, ptrdiff_t n,
                                const uint8_t *restrict lut, uint8_t *restrict d) {
    __m512i t[3][4];
    for (int c = 0; c < 3; c++)
        for (int k = 0; k < 4; k++) t[c][k] = _mm512_loadu_si512(lut + 256 * c + 64 * k);
    /* every[r]: the bytes j with j % 3 == r; a block starting at channel p holds
     * channel c at the bytes j with j % 3 == (c - p) mod 3 */
    static const uint64_t every[3] = {0x9249249249249249ull, 0x2492492492492492ull,
                                      0x4924924924924924ull};
    for (ptrdiff_t i = 0; i < n; i += 64) {
        const ptrdiff_t left = n - i;
        const __mmask64 live = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
        const __m512i x = _mm512_maskz_loadu_epi8(live, s + i);
        const __mmask64 top = _mm512_movepi8_mask(x);
        const int p = (int)(i % 3);
        __m512i r = _mm512_setzero_si512();
        for (int c = 0; c < 3; c++) {
            const __m512i low = _mm512_permutex2var_epi8(t[c][0], x, t[c][1]);
            const __m512i high = _mm512_permutex2var_epi8(t[c][2], x, t[c][3]);
            r = _mm512_mask_blend_epi8((__mmask64)every[(c - p + 3) % 3], r,
                                       _mm512_mask_blend_epi8(top, low, high));
        }
        _mm512_mask_storeu_epi8(d + i, live, r);
    }
}

/* The blends' last step, 8 lanes: k * alpha + c in double (each product and
 * sum exact or rounded as the portable code's double expression), rounded once
 * to float, clamped to 0..255 and truncated: the lanes' uint8 values as int32 */
__attribute__((target("avx2")))
static inline __m256i ff_aug_blend8(__m256i k, __m256d alpha, __m256 c) {
    const __m256d r0 = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(k)),
                                                   alpha),
                                     _mm256_cvtps_pd(_mm256_castps256_ps128(c)));
    const __m256d r1 = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(
                                                       _mm256_extracti128_si256(k, 1)), alpha),
                                     _mm256_cvtps_pd(_mm256_extractf128_ps(c, 1)));
    const __m256 r = _mm256_set_m128(_mm256_cvtpd_ps(r1), _mm256_cvtpd_ps(r0));
    return _mm256_cvttps_epi32(
        _mm256_min_ps(_mm256_max_ps(r, _mm256_setzero_ps()), _mm256_set1_ps(255.0f)));
}

/* sharpness inside the border (from value 3 on), 8 values at a time: the same
 * integer sums, the float32 blur and the double blend rounded once to float;
 * returns where the portable loop goes on */
__attribute__((target("avx2")))
static ptrdiff_t ff_aug_sharpness_avx2(const uint8_t *restrict b,
                                       const uint16_t *restrict colsum, ptrdiff_t n,
                                       double alpha, uint8_t *restrict d) {
    const __m256 inv13 = _mm256_set1_ps(1.0f / 13.0f), half = _mm256_set1_ps(0.5f);
    const __m256d va = _mm256_set1_pd(alpha);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    ptrdiff_t i = 3;
    for (; i + 8 <= n - 3; i += 8) {
        __m256i sum = _mm256_add_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(colsum + i - 3))),
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(colsum + i))));
        sum = _mm256_add_epi32(
            sum, _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(colsum + i + 3))));
        const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + i)));
        sum = _mm256_add_epi32(sum, _mm256_slli_epi32(v, 2));
        const __m256i blur = _mm256_cvttps_epi32(
            _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sum), inv13), half));
        /* v as float is exact, and so is its conversion to double */
        const __m256i q = ff_aug_blend8(_mm256_sub_epi32(blur, v), va, _mm256_cvtepi32_ps(v));
        const __m256i w16 = _mm256_packus_epi32(q, q);
        const __m256i w8 = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w16, w16), order);
        _mm_storel_epi64((__m128i *)(d + i), _mm256_castsi256_si128(w8));
    }
    return i;
}

/* saturation's blend, 8 pixels (24 values) at a time: each value's float32
 * product, plus its pixel's gray level times alpha in double, rounded once to
 * float; returns the pixels done */
__attribute__((target("avx2")))
static ptrdiff_t ff_aug_saturation_avx2(const uint8_t *restrict s, ptrdiff_t w,
                                        const int32_t *restrict gray, float f, double alpha,
                                        uint8_t *restrict d) {
    const __m256 vf = _mm256_set1_ps(f);
    const __m256d va = _mm256_set1_pd(alpha);
    /* the pixel of each of the 24 values */
    const __m256i spread[3] = {_mm256_setr_epi32(0, 0, 0, 1, 1, 1, 2, 2),
                               _mm256_setr_epi32(2, 3, 3, 3, 4, 4, 4, 5),
                               _mm256_setr_epi32(5, 5, 6, 6, 6, 7, 7, 7)};
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    ptrdiff_t x = 0;
    for (; x + 8 <= w; x += 8) {
        const __m256i g = _mm256_loadu_si256((const __m256i *)(gray + x));
        __m256i q[3];
        for (int j = 0; j < 3; j++) {
            const __m256i gj = _mm256_permutevar8x32_epi32(g, spread[j]);
            q[j] = ff_aug_blend8(gj, va, _mm256_mul_ps(ff_aug_load8(s + 3 * x + 8 * j), vf));
        }
        /* dwords [q0 low, q1 low, q2 low, q2 low | the high halves] -> in order */
        const __m256i bytes = _mm256_permutevar8x32_epi32(
            _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[2])),
            order);
        _mm_storeu_si128((__m128i *)(d + 3 * x), _mm256_castsi256_si128(bytes));
        _mm_storel_epi64((__m128i *)(d + 3 * x + 16), _mm256_extracti128_si256(bytes, 1));
    }
    return x;
}
#else
static inline int ff_aug_cpu(void) { return 0; }
#endif

/* ------------------------------------------------------------------------ */
/* whole rows of values (n = 3 * w bytes) */

static void ff_aug_copy(const uint8_t *src, ptrdiff_t ss, uint8_t *dst, ptrdiff_t ds, int h,
                        int w) {
    for (ptrdiff_t y = 0; y < h; y++) memcpy(dst + y * ds, src + y * ss, (size_t)w * 3);
}

/* d[i] = clamp(s[i] * f): adjust_brightness */
FF_AUG_CLONES static void ff_aug_scale_row(const uint8_t *restrict s, ptrdiff_t n, float f,
                                           uint8_t *restrict d) {
#ifdef FF_AUG_X86
    if (ff_aug_cpu() >= 1) {
        ff_aug_scale_row_avx2(s, n, f, d);
        return;
    }
#endif
    for (ptrdiff_t i = 0; i < n; i++) d[i] = ff_aug_u8((float)s[i] * f);
}

/* d[i] = s[i] & mask: posterize */
FF_AUG_CLONES static void ff_aug_and_row(const uint8_t *restrict s, ptrdiff_t n, uint8_t mask,
                                         uint8_t *restrict d) {
    for (ptrdiff_t i = 0; i < n; i++) d[i] = s[i] & mask;
}

/* d[i] = s[i] >= k ? 255 - s[i] : s[i]: solarize (k from the threshold) */
FF_AUG_CLONES static void ff_aug_solarize_row(const uint8_t *restrict s, ptrdiff_t n, int k,
                                              uint8_t *restrict d) {
    for (ptrdiff_t i = 0; i < n; i++) d[i] = s[i] >= k ? (uint8_t)(255 - s[i]) : s[i];
}

/* d[i] = lut[c * 256 + s[i]], c = i % 3 */
FF_AUG_CLONES static void ff_aug_lut_row(const uint8_t *restrict s, ptrdiff_t w,
                                         const uint8_t *restrict lut, uint8_t *restrict d) {
#ifdef FF_AUG_X86
    if (ff_aug_cpu() >= 2) {
        ff_aug_lut_row_vbmi(s, 3 * w, lut, d);
        return;
    }
#endif
    for (ptrdiff_t x = 0; x < w; x++) {
        d[3 * x] = lut[s[3 * x]];
        d[3 * x + 1] = lut[256 + s[3 * x + 1]];
        d[3 * x + 2] = lut[512 + s[3 * x + 2]];
    }
}

/* ------------------------------------------------------------------------ */
/* gray levels */

/* torchvision's gray level of one pixel, floored: r*0.2989, then two fused
 * multiply-adds (torch's add_ with alpha), in float32 */
static inline int32_t ff_aug_gray_float(uint8_t r, uint8_t g, uint8_t b) {
    float l = (float)((double)r * FF_AUG_GRAY_R);
    l = (float)((double)g * FF_AUG_GRAY_G + (double)l);
    l = (float)((double)b * FF_AUG_GRAY_B + (double)l);
    return (int32_t)ff_aug_floorf(l);
}

/* The same for a row, faster: (2989 r + 5870 g + 1140 b) / 10000 in integers
 * is the float32 result for every (r, g, b) whose sum is not a multiple of
 * 10000 (the float32 weights and roundings move the value by under 1e-4); on
 * those 1,704 of the 2^24 triples the float32 computation decides (the tests
 * check every triple). Fills gray[x] for a row of w pixels. */
FF_AUG_CLONES static void ff_aug_gray_row(const uint8_t *restrict s, ptrdiff_t w,
                                          int32_t *restrict gray) {
    int32_t exact = 0;
    for (ptrdiff_t x = 0; x < w; x++) {
        const uint32_t t = 2989u * s[3 * x] + 5870u * s[3 * x + 1] + 1140u * s[3 * x + 2];
        const uint32_t q = t / 10000u;
        gray[x] = (int32_t)q;
        exact |= t == q * 10000u;
    }
    if (!exact) return;
    for (ptrdiff_t x = 0; x < w; x++) {
        const uint32_t t = 2989u * s[3 * x] + 5870u * s[3 * x + 1] + 1140u * s[3 * x + 2];
        if (t % 10000u == 0) gray[x] = ff_aug_gray_float(s[3 * x], s[3 * x + 1], s[3 * x + 2]);
    }
}

/* adjust_saturation: _blend(image, floor(gray), factor), that is
 * clamp(fma(gray, (float)(1 - factor), v * factor)) for each channel value */
FF_AUG_CLONES static void ff_aug_saturation_row(const uint8_t *restrict s, ptrdiff_t w,
                                                const int32_t *restrict gray, float f,
                                                double alpha, uint8_t *restrict d) {
    ptrdiff_t x = 0;
#ifdef FF_AUG_X86
    if (ff_aug_cpu() >= 1) x = ff_aug_saturation_avx2(s, w, gray, f, alpha, d);
#endif
    for (; x < w; x++) {
        const double other = (double)gray[x] * alpha;
        d[3 * x] = ff_aug_u8((float)(other + (double)((float)s[3 * x] * f)));
        d[3 * x + 1] = ff_aug_u8((float)(other + (double)((float)s[3 * x + 1] * f)));
        d[3 * x + 2] = ff_aug_u8((float)(other + (double)((float)s[3 * x + 2] * f)));
    }
}

static void ff_aug_saturation(const uint8_t *src, ptrdiff_t ss, uint8_t *dst, ptrdiff_t ds, int h,
                              int w, double factor, int32_t *gray) {
    const float f = (float)factor;
    const double alpha = (double)(float)(1.0 - factor);
    for (ptrdiff_t y = 0; y < h; y++) {
        ff_aug_gray_row(src + y * ss, w, gray);
        ff_aug_saturation_row(src + y * ss, w, gray, f, alpha, dst + y * ds);
    }
}

/* adjust_contrast: _blend(image, mean, factor), the mean of the floored gray
 * levels as torch computes it in float32: (float)sum / (float)count (the sum
 * is exact in float32 while under 2^24, images of up to 65,793 pixels). The
 * result depends on the value alone: a table. */
static void ff_aug_contrast_lut(const uint8_t *src, ptrdiff_t ss, int h, int w, double factor,
                                int32_t *gray, uint8_t *lut) {
    int64_t total = 0;
    for (ptrdiff_t y = 0; y < h; y++) {
        ff_aug_gray_row(src + y * ss, w, gray);
        int32_t row = 0;
        for (ptrdiff_t x = 0; x < w; x++) row += gray[x];
        total += row;
    }
    const float mean = (float)total / (float)((int64_t)h * w);
    const float f = (float)factor;
    const double other = (double)mean * (double)(float)(1.0 - factor);
    for (int v = 0; v < 256; v++)
        lut[v] = lut[256 + v] = lut[512 + v] = ff_aug_u8((float)(other + (double)((float)v * f)));
}

/* ------------------------------------------------------------------------ */
/* sharpness */

/* adjust_sharpness, one row inside the border: each value v becomes
 * clamp(fma(blur - v, (float)(1 - factor), v)), blur the 3x3 smoothing
 * (weights 1, 5 in the centre, over 13) rounded. torch rounds the float32
 * convolution; s / 13 for an integer s <= 3315 is never nearer than 1/26 to a
 * tie, and float32 errors stay under 1e-4, so rounding s * (1/13) + 0.5 down
 * (in float32 too, here) gives the same integer. */
FF_AUG_CLONES static void ff_aug_sharpness_row(const uint8_t *restrict a, const uint8_t *restrict b,
                                               const uint8_t *restrict c, ptrdiff_t n,
                                               double alpha, uint16_t *restrict colsum,
                                               uint8_t *restrict d) {
    for (ptrdiff_t i = 0; i < n; i++) colsum[i] = (uint16_t)(a[i] + b[i] + c[i]);
    for (ptrdiff_t i = 0; i < 3; i++) {
        d[i] = b[i];
        d[n - 3 + i] = b[n - 3 + i];
    }
    ptrdiff_t i = 3;
#ifdef FF_AUG_X86
    if (ff_aug_cpu() >= 1) i = ff_aug_sharpness_avx2(b, colsum, n, alpha, d);
#endif
    for (; i < n - 3; i++) {
        const int32_t s = colsum[i - 3] + colsum[i] + colsum[i + 3] + 4 * b[i];
        const int32_t blur = (int32_t)((float)s * (1.0f / 13.0f) + 0.5f);
        d[i] = ff_aug_u8((float)((double)(blur - b[i]) * alpha + (double)b[i]));
    }
}

/* The border is copied; images of at most 2 rows or columns are copied whole. */
static void ff_aug_sharpness(const uint8_t *src, ptrdiff_t ss, uint8_t *dst, ptrdiff_t ds, int h,
                             int w, double factor, uint16_t *colsum) {
    if (h <= 2 || w <= 2) {
        ff_aug_copy(src, ss, dst, ds, h, w);
        return;
    }
    const double alpha = (double)(float)(1.0 - factor);
    const ptrdiff_t n = (ptrdiff_t)w * 3;
    memcpy(dst, src, (size_t)n);
    memcpy(dst + (h - 1) * ds, src + (h - 1) * ss, (size_t)n);
    for (ptrdiff_t y = 1; y < h - 1; y++)
        ff_aug_sharpness_row(src + (y - 1) * ss, src + y * ss, src + (y + 1) * ss, n, alpha, colsum,
                             dst + y * ds);
}

/* ------------------------------------------------------------------------ */
/* histograms: autocontrast, equalize */

/* Per-channel histograms, hist[c * 256 + v], counted in two interleaved sets
 * (a pixel's count does not wait for the previous pixel's) */
FF_AUG_CLONES static void ff_aug_histograms(const uint8_t *restrict src, ptrdiff_t ss, int h,
                                            int w, int32_t *restrict hist) {
    int32_t two[2][3 * 256];
    memset(two, 0, sizeof two);
    for (ptrdiff_t y = 0; y < h; y++) {
        const uint8_t *restrict s = src + y * ss;
        ptrdiff_t x = 0;
        for (; x + 1 < w; x += 2) {
            two[0][s[3 * x]]++;
            two[0][256 + s[3 * x + 1]]++;
            two[0][512 + s[3 * x + 2]]++;
            two[1][s[3 * x + 3]]++;
            two[1][256 + s[3 * x + 4]]++;
            two[1][512 + s[3 * x + 5]]++;
        }
        for (; x < w; x++) {
            two[0][s[3 * x]]++;
            two[0][256 + s[3 * x + 1]]++;
            two[0][512 + s[3 * x + 2]]++;
        }
    }
    for (int i = 0; i < 3 * 256; i++) hist[i] = two[0][i] + two[1][i];
}

/* autocontrast, per channel: (v - min) / ((float)(max - min) * (float)(1/255)),
 * in float32 (a channel with max == min is left as it is) */
static void ff_aug_autocontrast_lut(const int32_t *hist, uint8_t *lut) {
    for (int c = 0; c < 3; c++) {
        const int32_t *hc = hist + c * 256;
        int lo = 0, hi = 255;
        while (lo < 255 && hc[lo] == 0) lo++;
        while (hi > 0 && hc[hi] == 0) hi--;
        for (int v = 0; v < 256; v++) {
            if (hi <= lo) {
                lut[c * 256 + v] = (uint8_t)v;
                continue;
            }
            const float inv = (float)(hi - lo) * (float)(1.0 / 255);
            lut[c * 256 + v] = ff_aug_u8(((float)v - (float)lo) / inv);
        }
    }
}

/* equalize, per channel, as torchvision v2 (after PIL): step = (pixels
 * outside the highest occupied bin) / 255; lut[0] = 0, lut[v] = (cum[v-1] +
 * step/2) / step clamped to 255; a channel with step 0 is left as it is */
static void ff_aug_equalize_lut(const int32_t *hist, int64_t count, uint8_t *lut) {
    for (int c = 0; c < 3; c++) {
        const int32_t *hc = hist + c * 256;
        int last = 255;
        while (last > 0 && hc[last] == 0) last--;
        const int64_t step = (count - hc[last]) / 255;
        uint8_t *lc = lut + c * 256;
        if (step == 0) {
            for (int v = 0; v < 256; v++) lc[v] = (uint8_t)v;
            continue;
        }
        int64_t cum = 0;
        lc[0] = 0;
        for (int v = 1; v < 256; v++) {
            cum += hc[v - 1];
            const int64_t q = (cum + step / 2) / step;
            lc[v] = (uint8_t)(q > 255 ? 255 : q);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* geometric */

/* Ask for every cache line of the image, in order, before reading it across
 * its rows (rotations, shears): a slanted walk defeats the hardware's
 * prefetchers, so reading a cold image that way waits on memory ~2x longer. */
static void ff_aug_prefetch(const uint8_t *src, ptrdiff_t ss, int h, int w) {
    for (ptrdiff_t y = 0; y < h; y++)
        for (ptrdiff_t i = 0; i < (ptrdiff_t)w * 3; i += 64) __builtin_prefetch(src + y * ss + i, 0, 3);
}

/* The value written where the source lies outside the image: 0 without a
 * fill, else the fill rounded half to even (torchvision: where(mask < 0.5,
 * fill, v) then round_()). Four bytes: the fourth is never used. */
static void ff_aug_outside(const float *fill, uint8_t out[4]) {
    for (int c = 0; c < 3; c++) out[c] = fill == NULL ? 0 : ff_aug_u8(ff_aug_rintf(fill[c]));
    out[3] = 0;
}

/* Output pixel (x, y) samples the source where torchvision's affine grid and
 * grid_sample (align_corners=False, zeros outside) put it, computed as torch
 * computes it on a CPU, in float32, step by step:
 *   the matrix m (double) as float32, its rows divided by w/2 and h/2;
 *   gx = (X * a + Y * b) + c with X = x - (w-1)/2, Y = y - (h-1)/2 (exact);
 *   ix = fma(gx + 1, w/2, -0.5), and likewise iy.
 * (torch's batched product for the grid sums in that order; a position within
 * float32 error of a rounding tie lands where torch's does.)
 * Nearest: the pixel at the rounded (half to even) position, 0 outside.
 * Bilinear: x0 = floor(ix), wx = ix - x0, e = 1 - wx (and n, s for y), the
 * weights s*e, s*wx, n*e, n*wx (grid_sample's), neighbours outside counting
 * as 0, summed as grid_sample's compiled loop does: nw*v, then three fused
 * multiply-adds; with a fill, torchvision's mask (the same weights over an
 * image of ones) blends it in: (v - fill)*mask + fill. Then rounded half to
 * even.
 *
 * Each row in two passes: the positions (vectorised), then the pixels. */

typedef struct {
    float ax, bx, cx, ay, by, cy;  /* the rescaled matrix rows */
    float x0, y0;                  /* X and Y of pixel (0, 0) */
    float hw, hh;                  /* w/2 and h/2 */
} ff_aug_grid;

static ff_aug_grid ff_aug_make_grid(const double *m, int h, int w) {
    ff_aug_grid g;
    const float sw = 0.5f * (float)w, sh = 0.5f * (float)h;
    g.ax = (float)m[0] / sw;
    g.bx = (float)m[1] / sw;
    g.cx = (float)m[2] / sw;
    g.ay = (float)m[3] / sh;
    g.by = (float)m[4] / sh;
    g.cy = (float)m[5] / sh;
    g.x0 = (float)((1 - w) * 0.5);
    g.y0 = (float)((1 - h) * 0.5);
    g.hw = sw;
    g.hh = sh;
    return g;
}

/* float32 a * b + c rounded once (torch's vectorised CPU kernels fuse these):
 * in double, where a * b is exact (24-bit by 24-bit), as is the sum unless
 * the terms are 2^29 apart; and then the double rounding can differ from one
 * rounding only on an exact tie of the second. */
static inline float ff_aug_fma(float a, float b, float c) {
    return (float)((double)a * (double)b + (double)c);
}

/* A pixel's source position (ix, iy), in float32 as torch computes it (the
 * unnormalisation fused) */
static inline void ff_aug_position(const ff_aug_grid *g, float X, float Y, float *ix, float *iy) {
    const float gx = (X * g->ax + Y * g->bx) + g->cx;
    const float gy = (X * g->ay + Y * g->by) + g->cy;
    *ix = ff_aug_fma(gx + 1.0f, g->hw, -0.5f);
    *iy = ff_aug_fma(gy + 1.0f, g->hh, -0.5f);
}

/* One row's nearest source offsets (-1: outside); branch-free, so that it
 * vectorises (a position outside, or not a number, is never converted). */
FF_AUG_CLONES static void ff_aug_nearest_row(const ff_aug_grid *grid, int32_t y, int32_t w,
                                             int32_t h, int32_t ss, int32_t *restrict offset) {
    const ff_aug_grid g = *grid;
    const float Y = (float)y + g.y0, wf = (float)w, hf = (float)h;
    for (int32_t x = 0; x < w; x++) {  /* int32: an int64 to float conversion does not vectorise */
        float ix, iy;
        ff_aug_position(&g, (float)x + g.x0, Y, &ix, &iy);
        float rx = ff_aug_rintf(ix), ry = ff_aug_rintf(iy);
        const int inside = (rx >= 0.0f) & (rx < wf) & (ry >= 0.0f) & (ry < hf);
        rx = inside ? rx : 0.0f;
        ry = inside ? ry : 0.0f;
        const int32_t o = (int32_t)ry * ss + (int32_t)rx * 3;
        offset[x] = inside ? o : -1;
    }
}

/* One row of nearest pixels from their offsets. Copies 4 bytes per pixel (the
 * fourth is overwritten by the next pixel) but for the row's last pixel and
 * any whose source is the image's last byte triple. */
static void ff_aug_nearest_pixels(const uint8_t *restrict src, const int32_t *restrict offset,
                                  ptrdiff_t w, int32_t last, const uint8_t *outside,
                                  uint8_t *restrict d) {
    for (ptrdiff_t x = 0; x + 1 < w; x++) {
        const int32_t o = offset[x];
        const uint8_t *s = o >= 0 ? src + o : outside;
        if (o == last) {
            d[3 * x] = s[0];
            d[3 * x + 1] = s[1];
            d[3 * x + 2] = s[2];
        } else {
            memcpy(d + 3 * x, s, 4);
        }
    }
    const int32_t o = offset[w - 1];
    const uint8_t *s = o >= 0 ? src + o : outside;
    d[3 * w - 3] = s[0];
    d[3 * w - 2] = s[1];
    d[3 * w - 1] = s[2];
}

/* One row's bilinear taps: the top-left neighbour (x0[x], y0[x]) and the four
 * weights. Positions are clamped to [-2, w+1] x [-2, h+1] first (nothing
 * outside comes inside, and the conversions stay in range). */
FF_AUG_CLONES static void ff_aug_bilinear_row(const ff_aug_grid *grid, int32_t y, int32_t w,
                                              int32_t h, int32_t *restrict x0s,
                                              int32_t *restrict y0s, float *restrict wts) {
    const ff_aug_grid g = *grid;
    const float Y = (float)y + g.y0, wmax = (float)w + 1.0f, hmax = (float)h + 1.0f;
    float *restrict wnw = wts, *restrict wne = wts + w, *restrict wsw = wts + 2 * w,
                    *restrict wse = wts + 3 * w;
    for (int32_t x = 0; x < w; x++) {
        float ix, iy;
        ff_aug_position(&g, (float)x + g.x0, Y, &ix, &iy);
        ix = ix > -2.0f ? ix : -2.0f;  /* also sends NaN to -2 */
        ix = ix < wmax ? ix : wmax;
        iy = iy > -2.0f ? iy : -2.0f;
        iy = iy < hmax ? iy : hmax;
        const int32_t ixi = (int32_t)ix, iyi = (int32_t)iy;
        const int32_t X0 = ixi - (ix < (float)ixi), Y0 = iyi - (iy < (float)iyi);  /* floor */
        const float dw = ix - (float)X0, de = 1.0f - dw;
        const float dn = iy - (float)Y0, ds = 1.0f - dn;
        x0s[x] = X0;
        y0s[x] = Y0;
        wnw[x] = ds * de;
        wne[x] = ds * dw;
        wsw[x] = dn * de;
        wse[x] = dn * dw;
    }
}

/* One bilinear output pixel whose neighbours are partly outside */
static void ff_aug_bilinear_edge(const uint8_t *restrict src, ptrdiff_t ss, int h, int w,
                                 int X0, int Y0, float wnw, float wne, float wsw, float wse,
                                 const float *fill, uint8_t *restrict d) {
    const int inx0 = X0 >= 0 && X0 < w, inx1 = X0 + 1 >= 0 && X0 + 1 < w;
    const int iny0 = Y0 >= 0 && Y0 < h, iny1 = Y0 + 1 >= 0 && Y0 + 1 < h;
    const float onw = (float)(inx0 && iny0), one = (float)(inx1 && iny0);
    const float osw = (float)(inx0 && iny1), ose = (float)(inx1 && iny1);
    const float mask = onw * wnw + one * wne + osw * wsw + ose * wse;
    const uint8_t *r0 = src + (ptrdiff_t)Y0 * ss + (ptrdiff_t)X0 * 3, *r1 = r0 + ss;
    for (int c = 0; c < 3; c++) {
        const float vnw = onw != 0.0f ? (float)r0[c] : 0.0f;
        const float vne = one != 0.0f ? (float)r0[3 + c] : 0.0f;
        const float vsw = osw != 0.0f ? (float)r1[c] : 0.0f;
        const float vse = ose != 0.0f ? (float)r1[3 + c] : 0.0f;
        float v = ff_aug_fma(vse, wse, ff_aug_fma(vsw, wsw, ff_aug_fma(vne, wne, vnw * wnw)));
        if (fill != NULL) v = (v - fill[c]) * mask + fill[c];
        d[c] = ff_aug_u8(ff_aug_rintf(v));
    }
}

#if defined(__SSE2__)
typedef double ff_aug_v4d __attribute__((vector_size(32)));

/* ff_aug_fma on 4 lanes, b the same in all (GCC's vector types: one AVX
 * register of doubles in the AVX2 clone, two SSE2 ones in the other) */
static inline __m128 ff_aug_fma4(__m128 a, double b, __m128 c) {
    const ff_aug_v4d r = __builtin_convertvector(a, ff_aug_v4d) * b +
                         __builtin_convertvector(c, ff_aug_v4d);
    return __builtin_convertvector(r, __m128);
}

/* A pixel's 3 channels (and the byte after them) as 4 floats */
static inline __m128 ff_aug_load_px(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    const __m128i zero = _mm_setzero_si128();
    __m128i x = _mm_unpacklo_epi8(_mm_cvtsi32_si128(v), zero);
    return _mm_cvtepi32_ps(_mm_unpacklo_epi16(x, zero));
}
#endif

/* One row of bilinear output pixels from the row's taps. Pixels with all four
 * neighbours inside go 4 lanes at a time (3 channels and a spare lane), each
 * lane computing exactly the scalar sequence of roundings; reading 4 bytes per
 * neighbour needs one byte after it, so the image's last pixel goes scalar. */
FF_AUG_CLONES static void ff_aug_bilinear_pixels(const uint8_t *restrict src, ptrdiff_t ss,
                                                 int h, int w,
                                   const int32_t *x0s, const int32_t *y0s, const float *wts,
                                   const float *fill, const uint8_t *outside,
                                   uint8_t *restrict d) {
    const float *wnw = wts, *wne = wts + w, *wsw = wts + 2 * w, *wse = wts + 3 * w;
#if defined(__SSE2__)
    const __m128 big = _mm_set1_ps(12582912.0f), lo = _mm_setzero_ps(), hi = _mm_set1_ps(255.0f);
    const __m128 f = fill != NULL ? _mm_setr_ps(fill[0], fill[1], fill[2], 0.0f) : lo;
#endif
    for (ptrdiff_t x = 0; x < w; x++, d += 3) {
        const int X0 = x0s[x], Y0 = y0s[x];
        if (X0 < -1 || X0 >= w || Y0 < -1 || Y0 >= h) {  /* no neighbour inside */
            d[0] = outside[0];
            d[1] = outside[1];
            d[2] = outside[2];
            continue;
        }
        if (X0 < 0 || X0 + 1 >= w || Y0 < 0 || Y0 + 1 >= h) {
            ff_aug_bilinear_edge(src, ss, h, w, X0, Y0, wnw[x], wne[x], wsw[x], wse[x], fill, d);
            continue;
        }
        const uint8_t *r0 = src + (ptrdiff_t)Y0 * ss + (ptrdiff_t)X0 * 3, *r1 = r0 + ss;
#if defined(__SSE2__)
        if (!(Y0 + 2 == h && X0 + 2 == w)) {
            __m128 v = _mm_mul_ps(ff_aug_load_px(r0), _mm_set1_ps(wnw[x]));
            v = ff_aug_fma4(ff_aug_load_px(r0 + 3), wne[x], v);
            v = ff_aug_fma4(ff_aug_load_px(r1), wsw[x], v);
            v = ff_aug_fma4(ff_aug_load_px(r1 + 3), wse[x], v);
            if (fill != NULL) {
                const float mask = wnw[x] + wne[x] + wsw[x] + wse[x];
                v = _mm_add_ps(_mm_mul_ps(_mm_sub_ps(v, f), _mm_set1_ps(mask)), f);
            }
            v = _mm_sub_ps(_mm_add_ps(v, big), big);  /* round half to even */
            v = _mm_min_ps(_mm_max_ps(v, lo), hi);
            __m128i q = _mm_cvttps_epi32(v);
            q = _mm_packus_epi16(_mm_packs_epi32(q, q), q);
            const int32_t bytes = _mm_cvtsi128_si32(q);
            d[0] = (uint8_t)bytes;
            d[1] = (uint8_t)(bytes >> 8);
            d[2] = (uint8_t)(bytes >> 16);
            continue;
        }
#endif
        const float mask = wnw[x] + wne[x] + wsw[x] + wse[x];
        for (int c = 0; c < 3; c++) {
            float v = ff_aug_fma((float)r1[3 + c], wse[x],
                                 ff_aug_fma((float)r1[c], wsw[x],
                                            ff_aug_fma((float)r0[3 + c], wne[x],
                                                       (float)r0[c] * wnw[x])));
            if (fill != NULL) v = (v - fill[c]) * mask + fill[c];
            d[c] = ff_aug_u8(ff_aug_rintf(v));
        }
    }
}

/* offset holds 2 * w ints, wts 4 * w floats */
static void ff_aug_affine(const uint8_t *restrict src, ptrdiff_t ss, uint8_t *restrict dst,
                          ptrdiff_t ds, int h, int w, const double *m, int bilinear,
                          const float *fill, int32_t *offset, float *wts) {
    const ff_aug_grid grid = ff_aug_make_grid(m, h, w);
    const int32_t last = (int32_t)((h - 1) * ss + (w - 1) * 3);
    uint8_t outside[4];
    ff_aug_outside(fill, outside);
    ff_aug_prefetch(src, ss, h, w);
    for (int32_t y = 0; y < h; y++) {
        uint8_t *restrict d = dst + y * ds;
        if (!bilinear) {
            ff_aug_nearest_row(&grid, y, w, h, (int32_t)ss, offset);
            ff_aug_nearest_pixels(src, offset, w, last, outside, d);
        } else {
            ff_aug_bilinear_row(&grid, y, w, h, offset, offset + w, wts);
            ff_aug_bilinear_pixels(src, ss, h, w, offset, offset + w, wts, fill, outside, d);
        }
    }
}

/* dst[y, x] = src[y - dy, x - dx], the outside value where that is outside:
 * the affine transform by a whole-pixel translation, in either interpolation. */
static void ff_aug_shift(const uint8_t *restrict src, ptrdiff_t ss, uint8_t *restrict dst,
                         ptrdiff_t ds, int h, int w, int dx, int dy, const float *fill) {
    uint8_t outside[4];
    ff_aug_outside(fill, outside);
    ptrdiff_t x0 = dx > 0 ? dx : 0, x1 = dx < 0 ? (ptrdiff_t)w + dx : w;  /* columns with a source */
    if (x0 > w) x0 = w;
    if (x1 < x0) x1 = x0;
    for (ptrdiff_t y = 0; y < h; y++) {
        uint8_t *restrict d = dst + y * ds;
        const ptrdiff_t sy = y - dy;
        const int inside = sy >= 0 && sy < h && x1 > x0;
        for (ptrdiff_t x = 0; x < w; x++) {
            if (inside && x == x0) {
                memcpy(d + 3 * x, src + sy * ss + (x0 - dx) * 3, (size_t)(x1 - x0) * 3);
                x = x1 - 1;
                continue;
            }
            d[3 * x] = outside[0];
            d[3 * x + 1] = outside[1];
            d[3 * x + 2] = outside[2];
        }
    }
}

/* np.rot90(image, k): k quarter turns counter-clockwise (k = 1 or 3 need a
 * square image), torchvision's fast path for those angles. */
static void ff_aug_rot90(const uint8_t *restrict src, ptrdiff_t ss, uint8_t *restrict dst,
                         ptrdiff_t ds, int h, int w, int k) {
    if (k != 2) ff_aug_prefetch(src, ss, h, w);
    for (ptrdiff_t y = 0; y < h; y++) {
        uint8_t *restrict d = dst + y * ds;
        for (ptrdiff_t x = 0; x < w; x++) {
            ptrdiff_t sy, sx;
            if (k == 1) {
                sy = x;
                sx = w - 1 - y;
            } else if (k == 2) {
                sy = h - 1 - y;
                sx = w - 1 - x;
            } else {
                sy = h - 1 - x;
                sx = y;
            }
            const uint8_t *s = src + sy * ss + sx * 3;
            d[3 * x] = s[0];
            d[3 * x + 1] = s[1];
            d[3 * x + 2] = s[2];
        }
    }
}

/* ------------------------------------------------------------------------ */

/* Scratch for one image's operation, rows of w pixels: column sums
 * (sharpness), gray levels, source offsets or neighbours and weights
 * (affine); histograms, tables. */
typedef struct {
    uint16_t *colsum;   /* 3 * w */
    int32_t *gray;      /* w */
    int32_t *offset;    /* 2 * w: source offsets, or neighbours' x and y */
    float *weight;      /* 4 * w: bilinear weights */
    int32_t hist[3 * 256];
    uint8_t lut[3 * 256];
} ff_aug_scratch;

/* Apply operation `op` with parameters `p` to one image. `fill` is NULL or
 * three floats. The caller has checked op and p (augment.pyx). */
static void ff_aug_apply(int op, const double *p, const uint8_t *src, ptrdiff_t ss, uint8_t *dst,
                         ptrdiff_t ds, int h, int w, int bilinear, const float *fill,
                         ff_aug_scratch *scratch) {
    const ptrdiff_t n = (ptrdiff_t)w * 3;
    uint8_t *lut = scratch->lut;
    switch (op) {
    case FF_AUG_AFFINE:
        ff_aug_affine(src, ss, dst, ds, h, w, p, bilinear, fill, scratch->offset, scratch->weight);
        return;
    case FF_AUG_SHIFT:
        ff_aug_shift(src, ss, dst, ds, h, w, (int)p[0], (int)p[1], fill);
        return;
    case FF_AUG_ROT90:
        ff_aug_rot90(src, ss, dst, ds, h, w, (int)p[0]);
        return;
    case FF_AUG_BRIGHTNESS:
        for (ptrdiff_t y = 0; y < h; y++)
            ff_aug_scale_row(src + y * ss, n, (float)p[0], dst + y * ds);
        return;
    case FF_AUG_SATURATION:
        ff_aug_saturation(src, ss, dst, ds, h, w, p[0], scratch->gray);
        return;
    case FF_AUG_CONTRAST:
        ff_aug_contrast_lut(src, ss, h, w, p[0], scratch->gray, lut);
        break;
    case FF_AUG_SHARPNESS:
        ff_aug_sharpness(src, ss, dst, ds, h, w, p[0], scratch->colsum);
        return;
    case FF_AUG_POSTERIZE: {
        const int bits = (int)p[0];
        const uint8_t mask = bits >= 8 ? 0xFF : (uint8_t)(((1 << bits) - 1) << (8 - bits));
        for (ptrdiff_t y = 0; y < h; y++) ff_aug_and_row(src + y * ss, n, mask, dst + y * ds);
        return;
    }
    case FF_AUG_SOLARIZE: {
        /* values v with (float)v >= threshold (torch compares a uint8 tensor with
         * a Python float in float32) are inverted: those from k on */
        const float t = (float)p[0];
        int k = 0;
        while (k < 256 && !((float)k >= t)) k++;
        for (ptrdiff_t y = 0; y < h; y++) ff_aug_solarize_row(src + y * ss, n, k, dst + y * ds);
        return;
    }
    case FF_AUG_INVERT:
        for (ptrdiff_t y = 0; y < h; y++) ff_aug_solarize_row(src + y * ss, n, 0, dst + y * ds);
        return;
    case FF_AUG_AUTOCONTRAST:
        ff_aug_histograms(src, ss, h, w, scratch->hist);
        ff_aug_autocontrast_lut(scratch->hist, lut);
        break;
    case FF_AUG_EQUALIZE:
        ff_aug_histograms(src, ss, h, w, scratch->hist);
        ff_aug_equalize_lut(scratch->hist, (int64_t)h * w, lut);
        break;
    default: /* FF_AUG_COPY (FF_AUG_NONE never reaches here) */
        ff_aug_copy(src, ss, dst, ds, h, w);
        return;
    }
    for (ptrdiff_t y = 0; y < h; y++) ff_aug_lut_row(src + y * ss, w, lut, dst + y * ds);
}

/* ------------------------------------------------------------------------ */
/* the conversion that follows a policy (augment.pyx, augment_into with a table)
 *
 * The operations after a policy that turn each uint8 value into a float
 * (Convert, NormalizeImage) are taken over by it: each value v of channel c
 * becomes table[3 * v + c], a table the caller made by running those
 * operations themselves on every value, so the result is theirs exactly.
 * Where float32 arithmetic gives every entry of the table bit for bit (checked
 * here, entry by entry, before it is used), the rows are computed instead,
 * 8 values per AVX2 instruction: form 1, v * k0[c] + k1[c] (two roundings,
 * no fused multiply-add); form 2, (v - k0[c]) / k1[c] (torch's
 * NormalizeImage); then, for float16, rounded to nearest even (F16C). */

#ifdef FF_AUG_X86
#define FF_AUG_VECTOR_SINK 1
#endif

typedef struct {
    int kind;          /* 1: float16 (IEEE half bits), 2: float32 */
    int form;          /* 0: the table; 1: v * k0 + k1; 2: (v - k0) / k1 */
    float k0[3], k1[3];
    const void *table; /* 256 rows of 3 values of the output type */
} ff_aug_sink;

/* One row of w pixels through the table */
FF_AUG_CLONES static void ff_aug_table_row(const uint8_t *restrict s, ptrdiff_t w, int kind,
                                           const void *restrict table, char *restrict d) {
    if (kind == 1) {
        const uint16_t *t = (const uint16_t *)table;
        uint16_t *o = (uint16_t *)d;
        for (ptrdiff_t i = 0; i < 3 * w; i += 3) {
            o[i] = t[3 * s[i]];
            o[i + 1] = t[3 * s[i + 1] + 1];
            o[i + 2] = t[3 * s[i + 2] + 2];
        }
    } else {
        const float *t = (const float *)table;
        float *o = (float *)d;
        for (ptrdiff_t i = 0; i < 3 * w; i += 3) {
            o[i] = t[3 * s[i]];
            o[i + 1] = t[3 * s[i + 1] + 1];
            o[i + 2] = t[3 * s[i + 2] + 2];
        }
    }
}

#ifdef FF_AUG_VECTOR_SINK
/* v's entry for channel c in the sink's form, as the output type's bits */
__attribute__((target("avx2,f16c")))
static uint32_t ff_aug_sink_value(const ff_aug_sink *k, int v, int c) {
    const float x = (float)v;
    const float r = k->form == 1 ? x * k->k0[c] + k->k1[c] : (x - k->k0[c]) / k->k1[c];
    if (k->kind == 1) return (uint32_t)_cvtss_sh(r, _MM_FROUND_TO_NEAREST_INT);
    uint32_t bits;
    memcpy(&bits, &r, 4);
    return bits;
}

/* A row computed in the sink's form (1 or 2): blocks of 24 values (8 pixels),
 * whose channels repeat in three registers' patterns; the rest one by one */
__attribute__((target("avx2,f16c")))
static void ff_aug_form_row(const uint8_t *restrict s, ptrdiff_t w, const ff_aug_sink *k,
                            char *restrict d) {
    const ptrdiff_t n = 3 * w;
    float a[24], b[24];
    for (int j = 0; j < 24; j++) {
        a[j] = k->k0[j % 3];
        b[j] = k->k1[j % 3];
    }
    __m256 va[3], vb[3];
    for (int j = 0; j < 3; j++) {
        va[j] = _mm256_loadu_ps(a + 8 * j);
        vb[j] = _mm256_loadu_ps(b + 8 * j);
    }
    ptrdiff_t i = 0;
    for (; i + 24 <= n; i += 24) {
        for (int j = 0; j < 3; j++) {
            const __m128i bytes = _mm_loadl_epi64((const __m128i *)(s + i + 8 * j));
            const __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
            const __m256 r = k->form == 1 ? _mm256_add_ps(_mm256_mul_ps(x, va[j]), vb[j])
                                          : _mm256_div_ps(_mm256_sub_ps(x, va[j]), vb[j]);
            if (k->kind == 1)
                _mm_storeu_si128((__m128i *)(d + 2 * (i + 8 * j)),
                                 _mm256_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT));
            else
                _mm256_storeu_ps((float *)(d + 4 * (i + 8 * j)), r);
        }
    }
    for (; i < n; i++) {
        const uint32_t bits = ff_aug_sink_value(k, s[i], (int)(i % 3));
        if (k->kind == 1) {
            const uint16_t h = (uint16_t)bits;
            memcpy(d + 2 * i, &h, 2);
        } else {
            memcpy(d + 4 * i, &bits, 4);
        }
    }
}
#endif

/* Keep the sink's form only if this CPU computes it and it gives every entry
 * of the table; else the table (form 0). */
static void ff_aug_sink_check(ff_aug_sink *k) {
#ifdef FF_AUG_VECTOR_SINK
    if (k->form != 0 && ff_aug_cpu() >= 1) {
        for (int v = 0; v < 256; v++)
            for (int c = 0; c < 3; c++) {
                const uint32_t want = k->kind == 1 ? ((const uint16_t *)k->table)[3 * v + c]
                                                   : ((const uint32_t *)k->table)[3 * v + c];
                if (ff_aug_sink_value(k, v, c) != want) {
                    k->form = 0;
                    return;
                }
            }
        return;
    }
#endif
    k->form = 0;
}

/* src (uint8, rows ss bytes apart) into dst (rows ds bytes apart) */
static void ff_aug_convert(const uint8_t *src, ptrdiff_t ss, char *dst, ptrdiff_t ds, int h,
                           int w, const ff_aug_sink *k) {
    for (ptrdiff_t y = 0; y < h; y++) {
#ifdef FF_AUG_VECTOR_SINK
        if (k->form != 0) {
            ff_aug_form_row(src + y * ss, w, k, dst + y * ds);
            continue;
        }
#endif
        ff_aug_table_row(src + y * ss, w, k->kind, k->table, dst + y * ds);
    }
}

#endif /* FASTFORWARD_AUGMENT_KERNELS_H */
