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

/* out[i] = round(clamp(src[i], 0, 255)); branch-free so that it vectorises */
static inline void ff_row_to_u8(const float *restrict src, uint8_t *restrict out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = src[i] + 0.5f;
        v = v < 0.0f ? 0.0f : v;
        v = v > 255.0f ? 255.0f : v;
        out[i] = (uint8_t)(int32_t)v;
    }
}

/* One output row (as floats) from one filtered input row of `c` channels: output pixel
 * x is sum_k weight[x*taps + k] * row[(start[x] + k)*c + ch], mirrored if flip. */
static inline void ff_hpass_u8(const float *restrict row, const int *restrict start,
                               const int *restrict count, const float *restrict weight,
                               int taps, ptrdiff_t ow, ptrdiff_t c, int flip,
                               float *restrict out) {
    for (ptrdiff_t x = 0; x < ow; x++) {
        const float *restrict p = row + (ptrdiff_t)start[x] * c;
        const float *restrict wt = weight + x * taps;
        float *restrict o = out + (flip ? ow - 1 - x : x) * c;
        if (c == 3) {
            float r = 0.0f, g = 0.0f, b = 0.0f;
            for (int k = 0; k < count[x]; k++) {
                r += wt[k] * p[3 * k];
                g += wt[k] * p[3 * k + 1];
                b += wt[k] * p[3 * k + 2];
            }
            o[0] = r;
            o[1] = g;
            o[2] = b;
        } else {
            for (ptrdiff_t ch = 0; ch < c; ch++) {
                float acc = 0.0f;
                for (int k = 0; k < count[x]; k++) acc += wt[k] * p[k * c + ch];
                o[ch] = acc;
            }
        }
    }
}

#endif
