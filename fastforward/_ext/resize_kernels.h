/* Inner loops of resize.pyx, in C for one reason: `restrict`. Without it the
 * compiler must assume that a store through an unsigned char pointer may
 * change any float or int it has loaded (char aliases everything), so it
 * reloads the filter tables and cannot vectorise. */
#ifndef FASTFORWARD_RESIZE_KERNELS_H
#define FASTFORWARD_RESIZE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* acc[i] += w * src[i] for i < n */
static inline void ff_axpy_u8(float *restrict acc, const uint8_t *restrict src, float w,
                              ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) acc[i] += w * (float)src[i];
}

/* out[i] = round(clamp(src[i], 0, 255)), clamped as integers: that form
 * vectorises (twice as fast as clamping the floats, measured) */
static inline void ff_row_to_u8(const float *restrict src, uint8_t *restrict out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        int32_t v = (int32_t)(src[i] + 0.5f);
        v = v < 0 ? 0 : v;
        v = v > 255 ? 255 : v;
        out[i] = (uint8_t)v;
    }
}

/* Output pixel x of one row, `T` taps, 3 channels: unrolled for small T. */
#define FF_TAPS3(T)                                                              \
    for (ptrdiff_t x = 0; x < ow; x++) {                                         \
        const float *restrict p = row + (ptrdiff_t)start[x] * 3;                 \
        const float *restrict wt = weight + x * taps;                            \
        float *restrict o = out + (flip ? ow - 1 - x : x) * 3;                   \
        float r = 0.0f, g = 0.0f, b = 0.0f;                                      \
        for (int k = 0; k < (T); k++) {                                          \
            r += wt[k] * p[3 * k];                                               \
            g += wt[k] * p[3 * k + 1];                                           \
            b += wt[k] * p[3 * k + 2];                                           \
        }                                                                        \
        o[0] = r;                                                                \
        o[1] = g;                                                                \
        o[2] = b;                                                                \
    }

/* One output row (as floats) from one filtered input row of `c` channels:
 * output pixel x is sum_k weight[x*taps + k] * row[(start[x] + k)*c + ch] for
 * k < used (every pixel has `used` taps), mirrored if flip. */
static inline void ff_hpass_u8(const float *restrict row, const int *restrict start, int used,
                               const float *restrict weight, int taps, ptrdiff_t ow,
                               ptrdiff_t c, int flip, float *restrict out) {
    if (c == 3) {
        switch (used) {  /* constant trip counts: the compiler unrolls each case */
        case 1: FF_TAPS3(1) return;
        case 2: FF_TAPS3(2) return;
        case 3: FF_TAPS3(3) return;
        case 4: FF_TAPS3(4) return;
        default: FF_TAPS3(used) return;
        }
    }
    for (ptrdiff_t x = 0; x < ow; x++) {
        const float *restrict p = row + (ptrdiff_t)start[x] * c;
        const float *restrict wt = weight + x * taps;
        float *restrict o = out + (flip ? ow - 1 - x : x) * c;
        for (ptrdiff_t ch = 0; ch < c; ch++) {
            float acc = 0.0f;
            for (int k = 0; k < used; k++) acc += wt[k] * p[k * c + ch];
            o[ch] = acc;
        }
    }
}

#endif
