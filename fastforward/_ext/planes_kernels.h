/* Inner loops of planes.pyx: label images (masks) resized by nearest neighbour.
 *
 * Output byte i of a row copies byte offsets[i] of the source row; output rows
 * that read the same source row as the row above are a copy of it. With
 * SSSE3, where every block of 16 output bytes comes from 16 consecutive source
 * bytes (any enlargement), or else every block of 8 does (shrinking up to
 * about 2x), each block is one unaligned 16-byte load and one byte shuffle,
 * from a table made once per image (ff_nearest_table). Both forms copy the
 * same bytes. */
#ifndef FASTFORWARD_PLANES_KERNELS_H
#define FASTFORWARD_PLANES_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FF_PLANES_X86 1
#endif

static int ff_planes_ssse3 = -1;

/* For tests: 0 forces the portable loop, 1 goes back to what the CPU supports. */
static inline void ff_planes_set_simd(int on) { ff_planes_ssse3 = on ? -1 : 0; }

static inline int ff_planes_has_ssse3(void) {
#ifdef FF_PLANES_X86
    if (ff_planes_ssse3 < 0) {
        __builtin_cpu_init();
        ff_planes_ssse3 = __builtin_cpu_supports("ssse3");
    }
    return ff_planes_ssse3;
#else
    return 0;
#endif
}

/* Whether every whole block of `block` output bytes copies bytes within 16
 * consecutive source bytes; then the table of an output row of `nbytes` bytes
 * whose byte i copies source byte offsets[i]: for each block, the source offset
 * it loads 16 bytes from (`base`) and its `block` shuffle indices (`shuffle`,
 * 16 per block, the rest unused). Offsets may go down (a mirrored row): a
 * block loads from its smallest one. */
static inline int ff_nearest_block_table(const int32_t *restrict offsets, ptrdiff_t nbytes,
                                         int block, int32_t *restrict base,
                                         uint8_t *restrict shuffle) {
    for (ptrdiff_t b = 0; b < nbytes / block; b++) {
        int32_t lo = offsets[block * b], hi = offsets[block * b];
        for (int i = 1; i < block; i++) {
            int32_t v = offsets[block * b + i];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        if (hi - lo > 15) return 0;
        base[b] = lo;
        for (int i = 0; i < 16; i++)
            shuffle[16 * b + i] = i < block ? (uint8_t)(offsets[block * b + i] - lo) : 0x80;
    }
    return 1;
}

/* The table for a row (see ff_nearest_block_table): its block size, 16 or 8,
 * or 0 when neither fits (then only the portable loop applies). */
static inline int ff_nearest_table(const int32_t *restrict offsets, ptrdiff_t nbytes,
                                   int32_t *restrict base, uint8_t *restrict shuffle) {
    if (ff_nearest_block_table(offsets, nbytes, 16, base, shuffle)) return 16;
    if (ff_nearest_block_table(offsets, nbytes, 8, base, shuffle)) return 8;
    return 0;
}

/* Output bytes [from, to) of a row: byte i is row[offsets[i]]. */
static inline void ff_nearest_bytes(const uint8_t *restrict row, const int32_t *restrict offsets,
                                    ptrdiff_t from, ptrdiff_t to, uint8_t *restrict out) {
    for (ptrdiff_t i = from; i < to; i++) out[i] = row[offsets[i]];
}

#ifdef FF_PLANES_X86
/* The whole blocks of a row through the table; a block whose 16-byte load would
 * pass the `readable` bytes at `row` is copied byte by byte instead. */
__attribute__((target("ssse3")))
static void ff_nearest_row_ssse3(const uint8_t *restrict row, const int32_t *restrict offsets,
                                 const int32_t *restrict base, const uint8_t *restrict shuffle,
                                 int block, ptrdiff_t blocks, ptrdiff_t readable,
                                 uint8_t *restrict out) {
    for (ptrdiff_t b = 0; b < blocks; b++) {
        if (base[b] + 16 > readable) {
            ff_nearest_bytes(row, offsets, block * b, block * b + block, out);
            continue;
        }
        __m128i v = _mm_loadu_si128((const __m128i *)(row + base[b]));
        v = _mm_shuffle_epi8(v, _mm_loadu_si128((const __m128i *)(shuffle + 16 * b)));
        if (block == 16)
            _mm_storeu_si128((__m128i *)(out + 16 * b), v);
        else
            _mm_storel_epi64((__m128i *)(out + 8 * b), v);
    }
}
#endif

/* One output row of `nbytes` bytes from the source row at `row`: its whole
 * blocks through the table when there is one (`block`, 16 or 8; 0 for none)
 * and the CPU has SSSE3, the rest byte by byte. `readable`: the bytes that may
 * be read from `row` on (the table's loads read 16 from each block's base). */
static inline void ff_nearest_row(const uint8_t *restrict row, const int32_t *restrict offsets,
                                  const int32_t *restrict base, const uint8_t *restrict shuffle,
                                  int block, ptrdiff_t nbytes, ptrdiff_t readable,
                                  uint8_t *restrict out) {
    ptrdiff_t done = 0;
#ifdef FF_PLANES_X86
    if (block > 0 && ff_planes_has_ssse3()) {
        ff_nearest_row_ssse3(row, offsets, base, shuffle, block, nbytes / block, readable, out);
        done = nbytes / block * block;
    }
#else
    (void)base; (void)shuffle; (void)block; (void)readable;
#endif
    ff_nearest_bytes(row, offsets, done, nbytes, out);
}

#endif
