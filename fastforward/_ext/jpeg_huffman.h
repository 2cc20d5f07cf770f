/* fastforward's Huffman decoder for baseline JPEGs, in place of libjpeg's
 * (jpeg_region.h installs it after jpeg_start_decompress).
 *
 * Why: entropy decoding is more than half of what the crop decoders and the
 * writer spend on an image, and libjpeg-turbo turns its fast Huffman path off
 * for the whole of any JPEG with a restart interval (its decode_mcu sets
 * usefast = 0 when restart_interval is set), which the writer's JPEGs have.
 * This decoder is one loop for both, with restart markers handled between
 * MCUs; it reads a DC difference with one look-up of FF_HUFF_FAST bits where
 * its code and value bits fit in them, and up to two AC coefficients (or one
 * and the end of the block) with one look-up of FF_HUFF_PAIR bits.
 *
 * What it must give: the same coefficients as libjpeg, so the same pixels
 * (tests/test_ext_jpeg.py decodes every kind of JPEG both ways), and an error
 * (never a read past the data) where libjpeg would warn: a bad code, data
 * that runs into a marker, a restart marker out of place.
 *
 * It plugs in through libjpeg's entropy decoder object, whose public part
 * jpegint.h declares (jpeglib.h leaves it incomplete). Only its first two
 * members are declared below: they open it from IJG's libjpeg 6b to
 * libjpeg-turbo 3.1 (3.0 added members after them). It finds its state
 * through cinfo->client_data, which nothing else here uses.
 */
#ifndef FF_JPEG_HUFFMAN_H
#define FF_JPEG_HUFFMAN_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "jpeglib.h"

struct jpeg_entropy_decoder {  /* its opening only: never allocated or copied here */
    void (*start_pass)(j_decompress_ptr cinfo);
    boolean (*decode_mcu)(j_decompress_ptr cinfo, JBLOCKROW* MCU_data);
};

#define FF_HUFF_FAST 10      /* bits looked up at once (DC) */
#define FF_HUFF_FULL 0x20    /* entry flag: the value is decoded too */
#define FF_HUFF_PAIR 11      /* bits looked up at once (AC: up to two coefficients) */
/* AC entries (int64), 0 where the code is longer than FF_HUFF_PAIR bits.
 * With FF_PAIR_ONE: bits 0-3 the bits taken with one coefficient, 4-7 with
 * what follows it too (a second coefficient or the end of the block; the same
 * as 0-3 without), 12-15 the run of zeros before the first, 16-20 how far the
 * second is past the first (0 without), 32-47 and 48-63 the two values (the
 * second is the first's without one). Without it (a symbol whose value bits do
 * not fit, or with none: end of block, ZRL): bits 0-3 the code's length,
 * 21-28 the symbol. Flags: */
#define FF_PAIR_ONE (1 << 8)    /* a coefficient is decoded */
#define FF_PAIR_TWO (1 << 9)    /* and a second one */
#define FF_PAIR_EOB (1 << 10)   /* and the end of the block after the first */
#define FF_HUFF_MAX_BLOCKS 10 /* blocks in an MCU (libjpeg's D_MAX_BLOCKS_IN_MCU) */
#define FF_HUFF_END 0x100     /* ff_huff.marker where the data ended without one */

/* One Huffman table, derived from libjpeg's JHUFF_TBL: fast[] for a DC
 * table (see ff_huff_build_dc), pair[] for an AC table (above). Longer codes
 * are decoded bit length by bit length (maxcode, valoffset: JPEG's Figure
 * F.16). */
typedef struct {
    int32_t fast[1 << FF_HUFF_FAST];  /* DC tables */
    int64_t pair[1 << FF_HUFF_PAIR];  /* AC tables */
    int32_t maxcode[18];
    int32_t valoffset[18];
    uint8_t huffval[256];
    uint8_t source[17 + 256]; /* the JHUFF_TBL it was built from (bits, huffval) */
    int built, dc;
} ff_huff_table;

typedef struct {
    ff_huff_table dc[NUM_HUFF_TBLS], ac[NUM_HUFF_TBLS];
    /* per block of an MCU */
    ff_huff_table* dc_table[FF_HUFF_MAX_BLOCKS];
    ff_huff_table* ac_table[FF_HUFF_MAX_BLOCKS];
    int component[FF_HUFF_MAX_BLOCKS];
    int keep_dc[FF_HUFF_MAX_BLOCKS], keep_ac[FF_HUFF_MAX_BLOCKS];
    int blocks;
    /* the bit reader: `count` bits at the top of `bits`, zeros below them;
     * `marker` is the marker code the data ran into (0: none yet) */
    uint64_t bits;
    int count;
    int marker;
    int predictor[MAX_COMPS_IN_SCAN];
    unsigned int interval, to_go; /* MCUs of a restart interval, and left in this one */
    int restarts;                 /* restart markers passed */
    int rst_offset;               /* the file's markers are numbered this much ahead */
    int skip_to_markers;          /* data before a restart marker is skipped on purpose */
    void (*fail)(j_common_ptr cinfo, const char* message); /* longjmps */
    /* whether the source has data past its buffer (NULL: always); where it has
     * none, the data ending is like meeting a marker (FF_HUFF_END) */
    int (*has_more)(j_decompress_ptr cinfo);
    uint64_t declined; /* the tables of the last image left to libjpeg (a hash) */
} ff_huff;

/* JPEG's zig-zag order: natural[k] is where the k-th coefficient read goes.
 * Entries past 63 catch a run that overshoots in corrupt data (as libjpeg). */
static const int ff_huff_natural[80] = {
    0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6,  7,  14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
};

/* The value of the s bits v (JPEG's EXTEND: a leading 0 bit means negative). */
static inline int ff_huff_extend(int v, int s)
{
    return v < (1 << (s - 1)) ? v - (1 << s) + 1 : v;
}

/* DC: fast[] is indexed by the next FF_HUFF_FAST bits: 0 where the code is
 * longer; bits 0-4 a length, and either FF_HUFF_FULL with the difference in
 * bits 16-31 (the length covering code and value bits), or the size of the
 * difference in bits 8-15 (the length the code's). */
static void ff_huff_build_dc(ff_huff_table* t, const int* size, const unsigned int* codes, int n)
{
    memset(t->fast, 0, sizeof(t->fast));
    for (int p = 0; p < n && size[p] <= FF_HUFF_FAST; p++) {
        int length = size[p], symbol = t->huffval[p];
        int first = (int)(codes[p] << (FF_HUFF_FAST - length));
        int span = 1 << (FF_HUFF_FAST - length);
        for (int i = 0; i < span; i++) {
            int32_t entry;
            if (symbol <= 15 && length + symbol <= FF_HUFF_FAST) {
                int bits = symbol ? (i >> (FF_HUFF_FAST - length - symbol)) & ((1 << symbol) - 1)
                                  : 0;
                int value = symbol ? ff_huff_extend(bits, symbol) : 0;
                entry = (int32_t)((uint32_t)value << 16) | FF_HUFF_FULL | (length + symbol);
            } else {
                entry = (symbol << 8) | length;  /* (a size over 15 fails when read) */
            }
            t->fast[first + i] = entry;
        }
    }
}

static void ff_huff_build_pairs(ff_huff_table* t, const int* size, const unsigned int* codes,
                                int n)
{
    /* first each FF_HUFF_PAIR-bit pattern's first symbol: symbol << 8 | length,
     * 0 for a longer code */
    int32_t single[1 << FF_HUFF_PAIR];
    memset(single, 0, sizeof(single));
    for (int p = 0; p < n && size[p] <= FF_HUFF_PAIR; p++) {
        int first = (int)(codes[p] << (FF_HUFF_PAIR - size[p]));
        for (int i = 0; i < 1 << (FF_HUFF_PAIR - size[p]); i++)
            single[first + i] = (t->huffval[p] << 8) | size[p];
    }
    for (int i = 0; i < (1 << FF_HUFF_PAIR); i++) {
        int length = single[i] & 31, first = single[i] >> 8;
        int s = first & 15, one, rest, value;
        uint64_t entry;
        if (single[i] == 0) {
            t->pair[i] = 0;  /* a longer code */
            continue;
        }
        if (s == 0 || length + s > FF_HUFF_PAIR) {
            t->pair[i] = (int64_t)(((uint64_t)first << 21) | (uint64_t)length);
            continue;
        }
        one = length + s;
        value = ff_huff_extend((i >> (FF_HUFF_PAIR - one)) & ((1 << s) - 1), s);
        entry = FF_PAIR_ONE | ((uint64_t)(first >> 4) << 12) | (uint64_t)one | ((uint64_t)one << 4) |
                ((uint64_t)(uint16_t)value << 32) | ((uint64_t)(uint16_t)value << 48);
        rest = FF_HUFF_PAIR - one;
        if (rest > 0) {
            /* the next symbol, if its code lies within the bits left (the zeros
             * shifted in could only complete a longer one) */
            int32_t next = single[(i << one) & ((1 << FF_HUFF_PAIR) - 1)];
            int second_length = next & 31, second = next >> 8, s2 = second & 15;
            if (next != 0 && second_length <= rest) {
                if (second == 0) {
                    entry = (entry & ~(uint64_t)0xF0) | FF_PAIR_EOB |
                            ((uint64_t)(one + second_length) << 4);
                } else if (s2 > 0 && second_length + s2 <= rest) {
                    int two = one + second_length + s2;
                    value = ff_huff_extend((i >> (FF_HUFF_PAIR - two)) & ((1 << s2) - 1), s2);
                    entry = (entry & ~(uint64_t)0xF0 & ~(0xFFFFULL << 48)) | FF_PAIR_TWO |
                            ((uint64_t)two << 4) | ((uint64_t)(1 + (second >> 4)) << 16) |
                            ((uint64_t)(uint16_t)value << 48);
                }
            }
        }
        t->pair[i] = (int64_t)entry;
    }
}

/* Build t from libjpeg's table (validated by libjpeg already, in its own
 * start_pass); kept while the next image's table is the same. */
static void ff_huff_build(ff_huff_table* t, const JHUFF_TBL* from, int dc)
{
    int l, i, p = 0, n = 0, code = 0;
    int size[257];
    unsigned int codes[257];
    memcpy(t->source, from->bits, 17);
    for (l = 1; l <= 16; l++)
        n += from->bits[l];
    if (n > 256)
        n = 256;
    memcpy(t->source + 17, from->huffval, (size_t)n);
    memset(t->source + 17 + n, 0, (size_t)(256 - n));
    t->dc = dc;
    memcpy(t->huffval, from->huffval, 256);
    /* canonical codes, shortest first (JPEG's Figures C.1 and C.2) */
    for (l = 1; l <= 16; l++)
        for (i = 0; i < from->bits[l] && p < 256; i++)
            size[p++] = l;
    n = p;
    for (p = 0, l = 1; l <= 16; l++) {
        if (p < n && size[p] == l) {
            t->valoffset[l] = p - code;
            while (p < n && size[p] == l)
                codes[p++] = (unsigned int)code++;
            t->maxcode[l] = code - 1;
        } else {
            t->maxcode[l] = -1;
        }
        code <<= 1;
    }
    t->maxcode[17] = 0x7FFFFFFF;  /* never reached: lengths stop at 16 */
    t->valoffset[17] = 0;
    if (dc)
        ff_huff_build_dc(t, size, codes, n);
    else
        ff_huff_build_pairs(t, size, codes, n);
    t->built = 1;
}

/* Whether t was built from this table */
static int ff_huff_table_is(const ff_huff_table* t, const JHUFF_TBL* from, int dc)
{
    int l, n = 0;
    if (!t->built || t->dc != dc || memcmp(t->source, from->bits, 17) != 0)
        return 0;
    for (l = 1; l <= 16; l++)
        n += from->bits[l];
    if (n > 256)
        n = 256;
    return memcmp(t->source + 17, from->huffval, (size_t)n) == 0;
}

static void ff_huff_table_for(ff_huff_table* t, const JHUFF_TBL* from, int dc)
{
    if (!ff_huff_table_is(t, from, dc)) {
        t->built = 0;
        ff_huff_build(t, from, dc);
    }
}

/* Deriving an image's tables costs about as much as this decoder saves on
 * 1,400 blocks (20 µs): an image with fewer blocks whose tables are not those
 * derived last is left to libjpeg's decoder, unless the last image left to
 * it had the same tables (most files' tables are the standard ones, the same
 * for every image; an optimised file's differ from image to image). The first
 * image's are derived. */
#define FF_HUFF_REBUILD_BLOCKS 4096

static uint64_t ff_huff_hash(uint64_t hash, const JHUFF_TBL* table)
{
    int n = 0;
    for (int l = 1; l <= 16; l++) {
        n += table->bits[l];
        hash = (hash ^ table->bits[l]) * 0x100000001B3ULL;  /* FNV-1a */
    }
    for (int i = 0; i < n && i < 256; i++)
        hash = (hash ^ table->huffval[i]) * 0x100000001B3ULL;
    return hash;
}

/* Give cinfo our decode_mcu, after jpeg_start_decompress, where the scan is
 * one sequential Huffman scan of 8-bit data holding every component. Returns
 * 1 if installed, 0 to leave libjpeg's. */
static int ff_huff_install(ff_huff* h, j_decompress_ptr cinfo,
                           boolean (*decode_mcu)(j_decompress_ptr, JBLOCKROW*),
                           int rst_offset, int skip_to_markers)
{
    int b, c;
    if (cinfo->entropy == NULL || cinfo->arith_code || cinfo->progressive_mode ||
        cinfo->Ss != 0 || cinfo->Se != DCTSIZE2 - 1 || cinfo->Ah != 0 || cinfo->Al != 0 ||
        cinfo->data_precision != 8 || cinfo->comps_in_scan != cinfo->num_components ||
        cinfo->comps_in_scan > MAX_COMPS_IN_SCAN || cinfo->blocks_in_MCU > FF_HUFF_MAX_BLOCKS ||
        cinfo->blocks_in_MCU < 1)
        return 0;
    for (c = 0; c < cinfo->comps_in_scan; c++) {
        jpeg_component_info* comp = cinfo->cur_comp_info[c];
        if (comp->dc_tbl_no < 0 || comp->dc_tbl_no >= NUM_HUFF_TBLS || comp->ac_tbl_no < 0 ||
            comp->ac_tbl_no >= NUM_HUFF_TBLS || cinfo->dc_huff_tbl_ptrs[comp->dc_tbl_no] == NULL ||
            cinfo->ac_huff_tbl_ptrs[comp->ac_tbl_no] == NULL)
            return 0;
    }
    if ((double)cinfo->MCU_rows_in_scan * cinfo->MCUs_per_row * cinfo->blocks_in_MCU <
        FF_HUFF_REBUILD_BLOCKS) {
        int same = 1, fresh = 1;  /* the tables derived are these; none are derived */
        uint64_t hash = 0xCBF29CE484222325ULL;
        for (c = 0; c < cinfo->comps_in_scan; c++) {
            jpeg_component_info* comp = cinfo->cur_comp_info[c];
            same = same &&
                   ff_huff_table_is(&h->dc[comp->dc_tbl_no],
                                    cinfo->dc_huff_tbl_ptrs[comp->dc_tbl_no], 1) &&
                   ff_huff_table_is(&h->ac[comp->ac_tbl_no],
                                    cinfo->ac_huff_tbl_ptrs[comp->ac_tbl_no], 0);
            fresh = fresh && !h->dc[comp->dc_tbl_no].built && !h->ac[comp->ac_tbl_no].built;
        }
        if (!same && !fresh) {
            for (c = 0; c < cinfo->comps_in_scan; c++) {
                jpeg_component_info* comp = cinfo->cur_comp_info[c];
                hash = ff_huff_hash(hash, cinfo->dc_huff_tbl_ptrs[comp->dc_tbl_no]);
                hash = ff_huff_hash(hash, cinfo->ac_huff_tbl_ptrs[comp->ac_tbl_no]);
            }
            if (hash != h->declined) {
                h->declined = hash;
                return 0;
            }
        }
    }
    for (c = 0; c < cinfo->comps_in_scan; c++) {
        jpeg_component_info* comp = cinfo->cur_comp_info[c];
        ff_huff_table_for(&h->dc[comp->dc_tbl_no], cinfo->dc_huff_tbl_ptrs[comp->dc_tbl_no], 1);
        ff_huff_table_for(&h->ac[comp->ac_tbl_no], cinfo->ac_huff_tbl_ptrs[comp->ac_tbl_no], 0);
        h->predictor[c] = 0;
    }
    h->blocks = cinfo->blocks_in_MCU;
    for (b = 0; b < h->blocks; b++) {
        jpeg_component_info* comp;
        c = cinfo->MCU_membership[b];
        comp = cinfo->cur_comp_info[c];
        h->component[b] = c;
        h->dc_table[b] = &h->dc[comp->dc_tbl_no];
        h->ac_table[b] = &h->ac[comp->ac_tbl_no];
        /* as libjpeg: no AC coefficients for a component scaled to 1/8 */
        h->keep_dc[b] = comp->component_needed;
#if JPEG_LIB_VERSION >= 70
        h->keep_ac[b] = comp->component_needed && comp->DCT_h_scaled_size > 1;
#else
        h->keep_ac[b] = comp->component_needed && comp->DCT_scaled_size > 1;
#endif
    }
    h->bits = 0;
    h->count = 0;
    h->marker = 0;
    h->interval = h->to_go = cinfo->restart_interval;
    h->restarts = 0;
    h->rst_offset = rst_offset;
    h->skip_to_markers = skip_to_markers;
    cinfo->client_data = h;
    cinfo->entropy->decode_mcu = decode_mcu;
    return 1;
}

static void ff_huff_fail(j_decompress_ptr cinfo, ff_huff* h, const char* message)
{
    h->fail((j_common_ptr)cinfo, message);
}

/* More of the data from libjpeg's source (jpeg_region.h's fails, longjmping,
 * at the end of the data; one that suspends or gives nothing fails here) */
static void ff_huff_more(j_decompress_ptr cinfo)
{
    struct jpeg_source_mgr* src = cinfo->src;
    if (!(*src->fill_input_buffer)(cinfo) || src->bytes_in_buffer == 0)
        ((ff_huff*)cinfo->client_data)->fail((j_common_ptr)cinfo, "Premature end of JPEG file");
}

/* The next byte of the data */
static inline int ff_huff_byte(j_decompress_ptr cinfo)
{
    struct jpeg_source_mgr* src = cinfo->src;
    if (src->bytes_in_buffer == 0)
        ff_huff_more(cinfo);
    src->bytes_in_buffer--;
    return *src->next_input_byte++;
}

/* Eight bytes as one big-endian word */
static inline uint64_t ff_huff_big_endian(const uint8_t* p)
{
    uint64_t word;
    memcpy(&word, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return word;
#elif defined(__GNUC__) || defined(__clang__)
    return __builtin_bswap64(word);
#else
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
           ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | (uint64_t)p[7];
#endif
}

/* Top the bit buffer up to at least 57 bits, a byte at a time, or until the
 * data runs into a marker or ends (then it stays short: the bits below are
 * zeros, and a decode that needs them fails). It reads up to 8 bytes ahead of
 * what a code needs, so the end of the data is an error only once a code
 * needs bits past it, as in libjpeg (which refills at other moments: the two
 * meet the end of the data at different places). The state is in h and the
 * source. */
static void ff_huff_refill_slow(j_decompress_ptr cinfo, ff_huff* h)
{
    if (h->marker)
        return;
    while (h->count <= 56) {
        int c;
        if (cinfo->src->bytes_in_buffer == 0 && h->has_more != NULL && !h->has_more(cinfo)) {
            h->marker = FF_HUFF_END;
            return;
        }
        c = ff_huff_byte(cinfo);
        if (c == 0xFF) {
            do
                c = ff_huff_byte(cinfo);
            while (c == 0xFF);  /* fill bytes */
            if (c != 0) {       /* a marker: the data segment ends here */
                h->marker = c;
                return;
            }
            c = 0xFF;           /* FF 00 is a data byte FF */
        }
        h->bits |= (uint64_t)c << (56 - h->count);
        h->count += 8;
    }
}

/* The decoder's working state, in locals (registers) within an MCU */
typedef struct {
    uint64_t bits;
    int count;
    const uint8_t* next;
    size_t left;
} ff_huff_reader;

static inline void ff_huff_load(j_decompress_ptr cinfo, const ff_huff* h, ff_huff_reader* r)
{
    r->bits = h->bits;
    r->count = h->count;
    r->next = cinfo->src->next_input_byte;
    r->left = cinfo->src->bytes_in_buffer;
}

static inline void ff_huff_save(j_decompress_ptr cinfo, ff_huff* h, const ff_huff_reader* r)
{
    h->bits = r->bits;
    h->count = r->count;
    cinfo->src->next_input_byte = r->next;
    cinfo->src->bytes_in_buffer = r->left;
}

/* At least 32 bits in the buffer (57 or more after a refill), unless the data
 * has run into a marker. Eight bytes at once where none of them is 0xFF. */
static inline void ff_huff_fill(j_decompress_ptr cinfo, ff_huff* h, ff_huff_reader* r)
{
    if (r->count >= 32)
        return;
    if (r->left >= 8 && !h->marker) {
        uint64_t word = ff_huff_big_endian(r->next), inverted = ~word;
        /* no byte of word is 0xFF: no byte of ~word is 0 (whichever the order) */
        if (((inverted - 0x0101010101010101ULL) & ~inverted & 0x8080808080808080ULL) == 0) {
            int take = (64 - r->count) >> 3;  /* whole bytes that fit: 4 to 8 */
            int used = r->count + 8 * take;
            uint64_t fresh = word >> r->count;
            if (used < 64)
                fresh &= ~0ULL << (64 - used);
            r->bits |= fresh;
            r->count = used;
            r->next += take;
            r->left -= (size_t)take;
            return;
        }
    }
    ff_huff_save(cinfo, h, r);
    ff_huff_refill_slow(cinfo, h);
    ff_huff_load(cinfo, h, r);
}

/* Where a restart interval ends: drop what is left of the last byte, read the
 * restart marker (skipping to it where the rest of a row is skipped on
 * purpose), and start the next interval's DC predictions from 0. */
static void ff_huff_restart(j_decompress_ptr cinfo, ff_huff* h)
{
    char message[JMSG_LENGTH_MAX];
    long skipped = h->count / 8;
    int expected = 0xD0 + ((h->restarts + h->rst_offset) & 7), c;
    if (h->marker == FF_HUFF_END)  /* the data ended before this interval's marker */
        ff_huff_fail(cinfo, h, "Premature end of JPEG file");
    h->bits = 0;
    h->count = 0;
    if (h->marker == 0) {
        struct jpeg_source_mgr* src = cinfo->src;
        for (;;) {
            const uint8_t* at;
            if (src->bytes_in_buffer == 0)
                ff_huff_more(cinfo);
            at = (const uint8_t*)memchr(src->next_input_byte, 0xFF, src->bytes_in_buffer);
            if (at == NULL) {
                skipped += (long)src->bytes_in_buffer;
                src->next_input_byte += src->bytes_in_buffer;
                src->bytes_in_buffer = 0;
                continue;
            }
            skipped += (long)(at - src->next_input_byte);
            src->bytes_in_buffer -= (size_t)(at + 1 - src->next_input_byte);
            src->next_input_byte = at + 1;
            do
                c = ff_huff_byte(cinfo);
            while (c == 0xFF);
            if (c != 0) {
                h->marker = c;
                break;
            }
            skipped += 2;  /* FF 00: data */
        }
    }
    if (skipped > 0 && !h->skip_to_markers) {
        snprintf(message, sizeof(message),
                 "Corrupt JPEG data: %ld extraneous bytes before marker 0x%02x", skipped,
                 h->marker);
        ff_huff_fail(cinfo, h, message);
    }
    if (h->marker != expected) {
        snprintf(message, sizeof(message),
                 "Corrupt JPEG data: found marker 0x%02x instead of RST%d", h->marker,
                 expected - 0xD0);
        ff_huff_fail(cinfo, h, message);
    }
    h->marker = 0;
    h->restarts++;
    for (c = 0; c < MAX_COMPS_IN_SCAN; c++)
        h->predictor[c] = 0;
    h->to_go = h->interval;
}

/* A code longer than the table looked up (FF_HUFF_FAST bits for DC,
 * FF_HUFF_PAIR for AC): its symbol, or -1 for none. */
static int ff_huff_long(const ff_huff_table* t, uint64_t bits, int* length)
{
    int32_t top = (int32_t)(bits >> 48);
    for (int l = FF_HUFF_FAST + 1; l <= 16; l++) {
        int32_t code = top >> (16 - l);
        if (code <= t->maxcode[l]) {
            *length = l;
            return t->huffval[(code + t->valoffset[l]) & 0xFF];
        }
    }
    return -1;
}

/* Decode one symbol's code (no value bits), from a filled buffer. */
static inline int ff_huff_symbol(j_decompress_ptr cinfo, ff_huff* h, const ff_huff_table* t,
                                 int32_t entry, ff_huff_reader* r)
{
    int length, symbol;
    if (entry != 0) {
        length = entry & 31;
        symbol = (entry >> 8) & 0xFF;
    } else {
        symbol = ff_huff_long(t, r->bits, &length);
        if (symbol < 0)
            ff_huff_fail(cinfo, h, "Corrupt JPEG data: bad Huffman code");
    }
    r->bits <<= length;
    r->count -= length;
    return symbol;
}

/* libjpeg's decode_mcu: the coefficients of the next MCU into MCU_data
 * (zeroed by the caller), or nowhere where MCU_data is NULL (rows skipped). */
static boolean ff_huff_decode_mcu(j_decompress_ptr cinfo, JBLOCKROW* MCU_data)
{
    ff_huff* h = (ff_huff*)cinfo->client_data;
    JCOEF scratch[DCTSIZE2];
    ff_huff_reader r;
    if (h->interval) {
        if (h->to_go == 0)
            ff_huff_restart(cinfo, h);
        h->to_go--;
    }
    ff_huff_load(cinfo, h, &r);
    for (int b = 0; b < h->blocks; b++) {
        const ff_huff_table* dc = h->dc_table[b];
        const int64_t* pairs = h->ac_table[b]->pair;
        JCOEF* block = MCU_data ? MCU_data[b][0] : NULL;
        JCOEF* out = block && h->keep_ac[b] ? block : scratch;
        int32_t entry;
        int s, k, diff;
        ff_huff_fill(cinfo, h, &r);
        /* the DC coefficient: a difference from the last block's of this component */
        entry = dc->fast[r.bits >> (64 - FF_HUFF_FAST)];
        if (entry & FF_HUFF_FULL) {
            diff = entry >> 16;
            s = entry & 31;
            r.bits <<= s;
            r.count -= s;
        } else {
            s = ff_huff_symbol(cinfo, h, dc, entry, &r);
            if (s > 15)
                ff_huff_fail(cinfo, h, "Corrupt JPEG data: bad Huffman code");
            diff = s ? ff_huff_extend((int)(r.bits >> (64 - s)), s) : 0;
            r.bits <<= s;
            r.count -= s;
        }
        /* (wrapping, as libjpeg's does, where corrupt data overflows it) */
        diff = (int)((unsigned int)diff + (unsigned int)h->predictor[h->component[b]]);
        h->predictor[h->component[b]] = diff;
        if (block && h->keep_dc[b])
            block[0] = (JCOEF)diff;
        /* the AC coefficients, in zig-zag order, runs of zeros skipped: where
         * they fit in the bits looked up, two at a time (the second only
         * while the block has room), or one and the end of the block */
        for (k = 1; k < DCTSIZE2; k++) {
            int64_t pair;
            ff_huff_fill(cinfo, h, &r);
            pair = pairs[r.bits >> (64 - FF_HUFF_PAIR)];
            if (pair & FF_PAIR_ONE) {
                /* with a second coefficient, or the end of the block, only
                 * while the first is not the block's last */
                int first = k + (int)((pair >> 12) & 15);
                int room = first < DCTSIZE2 - 1;
                int taken = room ? (int)((pair >> 4) & 15) : (int)(pair & 15);
                int second = first + (room ? (int)((pair >> 16) & 31) : 0);
                out[ff_huff_natural[second]] = (JCOEF)(pair >> 48);
                out[ff_huff_natural[first]] = (JCOEF)(pair >> 32);  /* after: second may be first */
                r.bits <<= taken;
                r.count -= taken;
                k = second;
                if (room && (pair & FF_PAIR_EOB))
                    break;
            } else {
                int symbol;
                if (pair != 0) {
                    int length = (int)(pair & 15);
                    symbol = (int)((pair >> 21) & 0xFF);
                    r.bits <<= length;
                    r.count -= length;
                } else {
                    symbol = ff_huff_symbol(cinfo, h, h->ac_table[b], 0, &r);
                }
                s = symbol & 15;
                if (s) {
                    k += symbol >> 4;
                    out[ff_huff_natural[k]] =
                        (JCOEF)ff_huff_extend((int)(r.bits >> (64 - s)), s);
                    r.bits <<= s;
                    r.count -= s;
                } else if (symbol == 0xF0) {
                    k += 15;  /* sixteen zeros */
                } else {
                    break;    /* end of block */
                }
            }
        }
        if (r.count < 0) {  /* bits past the marker, or the data's end, were needed */
            ff_huff_save(cinfo, h, &r);
            ff_huff_fail(cinfo, h, h->marker == FF_HUFF_END
                                       ? "Premature end of JPEG file"
                                       : "Corrupt JPEG data: premature end of data segment");
        }
    }
    ff_huff_save(cinfo, h, &r);
    return TRUE;
}

#endif /* FF_JPEG_HUFFMAN_H */
