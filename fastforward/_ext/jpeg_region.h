/* Decoding a window of a JPEG with libjpeg-turbo's own API (jpeg.pyx).
 *
 * libjpeg reports a fatal error by calling error_exit, which by default
 * prints and calls exit(). Here error_exit formats the message into the
 * decoder and longjmps back into ff_jpeg_decode_window, the C function that
 * called libjpeg, so no jump ever crosses a Python (or Cython) frame. Warnings
 * (corrupt data libjpeg would paper over, such as a truncated stream filled
 * with grey) are errors too, as in simplejpeg.
 *
 * Everything here runs without the GIL. A decoder is used by one thread at a
 * time; its libjpeg object and its row buffer are kept from image to image.
 */
#ifndef FF_JPEG_REGION_H
#define FF_JPEG_REGION_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h> /* jpeglib.h needs FILE */
#include <stdlib.h>
#include <string.h>

#include "jpeglib.h"
#include "jerror.h"
#include "jpeg_huffman.h"

enum {
    FF_JPEG_OK = 0,
    FF_JPEG_ERROR = 1,   /* libjpeg's message is in ff_jpeg.message */
    FF_JPEG_SIZE = 2,    /* the header's size is not the expected one */
    FF_JPEG_NOMEM = 3,
    FF_JPEG_UNSUPPORTED = 4, /* planes: not a YCbCr or grayscale JPEG sampled as handled */
};

#if JPEG_LIB_VERSION >= 70
#define FF_DCT_ROWS(comp) ((comp)->DCT_v_scaled_size)
#define FF_DCT_COLUMNS(comp) ((comp)->DCT_h_scaled_size)
#define FF_MIN_DCT_ROWS(cinfo) ((cinfo)->min_DCT_v_scaled_size)
#else
#define FF_DCT_ROWS(comp) ((comp)->DCT_scaled_size)
#define FF_DCT_COLUMNS(comp) ((comp)->DCT_scaled_size)
#define FF_MIN_DCT_ROWS(cinfo) ((cinfo)->min_DCT_scaled_size)
#endif

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char* message; /* JMSG_LENGTH_MAX bytes */
    int skip_to_markers; /* each row's data after the window is skipped: not an error */
} ff_jpeg_error_mgr;

/* libjpeg's input: up to two chunks of memory, read one after the other (the
 * header, then the entropy-coded data from a restart marker on), so that a
 * window can start decoding at the restart marker above it. */
typedef struct {
    struct jpeg_source_mgr pub;
    const uint8_t* chunk[2];
    size_t size[2];
    int next;        /* the next chunk to hand out */
    int rst_offset;  /* restart markers are numbered this much ahead of libjpeg's count */
} ff_jpeg_source;

typedef struct {
    struct jpeg_decompress_struct cinfo;
    ff_jpeg_error_mgr err;
    ff_jpeg_source src;
    uint8_t* header;      /* a copy of the header, its height changed */
    size_t header_capacity;
    char message[JMSG_LENGTH_MAX];
    int created;
    uint8_t* pixels;      /* the decoded window: rows of `columns` pixels */
    size_t capacity;
    JSAMPROW* rows;       /* row pointers into `pixels` */
    size_t row_capacity;
    /* out: what the last decode found */
    int image_height, image_width;  /* the header's (unscaled) */
    int x_offset, columns;          /* the decoded columns, in the scaled image */
    size_t stride;                  /* bytes from one row of `pixels` to the next */
    int restart_row;                /* the iMCU row decoding started at (0: the top) */
    int restart_mcus;               /* the MCUs of each row it decoded (0: all) */
    /* ff_jpeg_decode_planes: each component's samples, in `pixels` */
    int planes;                     /* 1 (grayscale) or 3 (Y, Cb, Cr) */
    uint8_t* plane[3];
    int plane_height[3], plane_width[3];
    double plane_span_height[3], plane_span_width[3]; /* the image's extent, in samples */
    size_t plane_stride[3];
    /* entropy decoding: fastforward's (jpeg_huffman.h), or libjpeg's with this set */
    int libjpeg_huffman;
    int own_huffman;                /* out: whether the last decode used fastforward's */
    ff_huff huff;
} ff_jpeg;

static void ff_jpeg_error_exit(j_common_ptr cinfo)
{
    ff_jpeg_error_mgr* err = (ff_jpeg_error_mgr*)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void ff_jpeg_emit_message(j_common_ptr cinfo, int level)
{
    ff_jpeg_error_mgr* err = (ff_jpeg_error_mgr*)cinfo->err;
    if (level < 0 && err->skip_to_markers && cinfo->err->msg_code == JWRN_EXTRANEOUS_DATA)
        return;  /* the rest of a row, skipped on purpose to its restart marker */
    if (level < 0)  /* a warning: the data is corrupt */
        ff_jpeg_error_exit(cinfo);
    /* trace messages (level >= 0) are dropped */
}

static void ff_jpeg_output_message(j_common_ptr cinfo)
{
    (void)cinfo;  /* never print */
}

static void ff_jpeg_fail(j_common_ptr cinfo, const char* message)
{
    ff_jpeg_error_mgr* err = (ff_jpeg_error_mgr*)cinfo->err;
    strcpy(err->message, message);
    err->pub.msg_code = 0;  /* not libjpeg's: no earlier code read as this error's */
    longjmp(err->jump, 1);
}

/* What a longjmp out of libjpeg means: FF_JPEG_NOMEM where an allocation
 * failed (libjpeg's own, or the encoder's growing buffer), FF_JPEG_ERROR
 * otherwise (the message says what). */
static int ff_jpeg_failure(j_common_ptr cinfo)
{
    return cinfo->err->msg_code == JERR_OUT_OF_MEMORY ? FF_JPEG_NOMEM : FF_JPEG_ERROR;
}

static int ff_src_has_more(j_decompress_ptr cinfo);

/* After jpeg_start_decompress: entropy-decode with jpeg_huffman.h where it
 * takes the scan (a sequential Huffman scan of every component). */
static void ff_jpeg_use_own_huffman(ff_jpeg* j)
{
    j->own_huffman = 0;
    if (j->libjpeg_huffman)
        return;
    j->huff.fail = ff_jpeg_fail;
    j->huff.has_more = ff_src_has_more;
    j->own_huffman = ff_huff_install(&j->huff, &j->cinfo, ff_huff_decode_mcu,
                                     j->src.rst_offset, j->err.skip_to_markers);
}

static void ff_src_init(j_decompress_ptr cinfo)
{
    (void)cinfo;
}

static boolean ff_src_fill(j_decompress_ptr cinfo)
{
    ff_jpeg_source* src = (ff_jpeg_source*)cinfo->src;
    while (src->next < 2) {
        int k = src->next++;
        if (src->size[k] > 0) {
            src->pub.next_input_byte = src->chunk[k];
            src->pub.bytes_in_buffer = src->size[k];
            return TRUE;
        }
    }
    /* jpeg_mem_src would warn and insert an EOI; a warning is an error here */
    ff_jpeg_fail((j_common_ptr)cinfo, "Premature end of JPEG file");
    return FALSE;
}

static void ff_src_skip(j_decompress_ptr cinfo, long count)
{
    ff_jpeg_source* src = (ff_jpeg_source*)cinfo->src;
    if (count <= 0)
        return;
    while ((size_t)count > src->pub.bytes_in_buffer) {
        count -= (long)src->pub.bytes_in_buffer;
        ff_src_fill(cinfo);
    }
    src->pub.next_input_byte += count;
    src->pub.bytes_in_buffer -= (size_t)count;
}

/* A restart marker other than the one libjpeg counted: the one expected where
 * decoding started below the first restart marker is fine, anything else is
 * libjpeg's business (a warning, so an error here). */
static boolean ff_src_resync(j_decompress_ptr cinfo, int desired)
{
    ff_jpeg_source* src = (ff_jpeg_source*)cinfo->src;
    if (src->rst_offset != 0 &&
        cinfo->unread_marker == (int)(0xD0 + ((desired + src->rst_offset) & 7))) {
        cinfo->unread_marker = 0;
        return TRUE;
    }
    return jpeg_resync_to_restart(cinfo, desired);
}

static void ff_src_term(j_decompress_ptr cinfo)
{
    (void)cinfo;
}

/* Whether a chunk with data is left to hand out after the buffer libjpeg reads */
static int ff_src_has_more(j_decompress_ptr cinfo)
{
    ff_jpeg_source* src = (ff_jpeg_source*)cinfo->src;
    for (int k = src->next; k < 2; k++)
        if (src->size[k] > 0)
            return 1;
    return 0;
}

static void ff_src_set(ff_jpeg* j, const uint8_t* a, size_t na, const uint8_t* b, size_t nb,
                       int rst_offset)
{
    j->src.chunk[0] = a;
    j->src.size[0] = na;
    j->src.chunk[1] = b;
    j->src.size[1] = nb;
    j->src.next = 0;
    j->src.rst_offset = rst_offset;
    j->src.pub.next_input_byte = NULL;
    j->src.pub.bytes_in_buffer = 0;
}

/* Set up *j (zeroed by the caller). Returns FF_JPEG_OK or FF_JPEG_ERROR. */
static int ff_jpeg_open(ff_jpeg* j)
{
    j->cinfo.err = jpeg_std_error(&j->err.pub);
    j->err.pub.error_exit = ff_jpeg_error_exit;
    j->err.pub.emit_message = ff_jpeg_emit_message;
    j->err.pub.output_message = ff_jpeg_output_message;
    j->err.message = j->message;
    j->message[0] = 0;
    if (setjmp(j->err.jump))
        return FF_JPEG_ERROR;
    jpeg_create_decompress(&j->cinfo);
    j->created = 1;
    j->src.pub.init_source = ff_src_init;
    j->src.pub.fill_input_buffer = ff_src_fill;
    j->src.pub.skip_input_data = ff_src_skip;
    j->src.pub.resync_to_restart = ff_src_resync;
    j->src.pub.term_source = ff_src_term;
    j->cinfo.src = &j->src.pub;
    return FF_JPEG_OK;
}

static void ff_jpeg_close(ff_jpeg* j)
{
    if (j->created)
        jpeg_destroy_decompress(&j->cinfo);
    j->created = 0;
    free(j->pixels);
    free(j->rows);
    free(j->header);
    j->pixels = NULL;
    j->rows = NULL;
    j->header = NULL;
    j->capacity = j->row_capacity = j->header_capacity = 0;
}

static int ff_jpeg_reserve(ff_jpeg* j, size_t nbytes, size_t rows)
{
    if (nbytes > j->capacity) {
        uint8_t* grown = (uint8_t*)realloc(j->pixels, nbytes);
        if (grown == NULL)
            return FF_JPEG_NOMEM;
        j->pixels = grown;
        j->capacity = nbytes;
    }
    if (rows > j->row_capacity) {
        JSAMPROW* grown = (JSAMPROW*)realloc(j->rows, rows * sizeof(JSAMPROW));
        if (grown == NULL)
            return FF_JPEG_NOMEM;
        j->rows = grown;
        j->row_capacity = rows;
    }
    return FF_JPEG_OK;
}

/* simplejpeg's CMYK to RGB (Adobe's inverted CMYK, as libjpeg returns it), in place */
static void ff_cmyk_to_rgb(uint8_t* row, int n)
{
    const uint8_t* in = row;
    uint8_t* out = row;
    for (int i = 0; i < n; i++, in += 4, out += 3) {
        unsigned k = in[3];
        uint8_t c = in[0], m = in[1], y = in[2];
        out[0] = (uint8_t)(k - (((255u - c) * k) >> 8));
        out[1] = (uint8_t)(k - (((255u - m) * k) >> 8));
        out[2] = (uint8_t)(k - (((255u - y) * k) >> 8));
    }
}

/* Read the header of the whole JPEG at data (all of it as libjpeg's input, no
 * skipping to markers) and note its size. libjpeg's errors longjmp to the
 * caller's setjmp. */
static void ff_jpeg_read_whole_header(ff_jpeg* j, const uint8_t* data, size_t size)
{
    j->err.skip_to_markers = 0;
    ff_src_set(j, data, size, NULL, 0, 0);
    jpeg_read_header(&j->cinfo, TRUE);
    j->image_height = (int)j->cinfo.image_height;
    j->image_width = (int)j->cinfo.image_width;
}

/* Where decoding a window can start and stop, in a JPEG with a restart marker
 * at each MCU row (fastforward's writer makes them so). */
typedef struct {
    int row;               /* the iMCU row decoding starts at (0: the top) */
    const uint8_t* resume; /* its first entropy-coded byte (after its marker) */
    long markers;          /* restart markers before it */
    int mcus;              /* MCUs of each row decoded (0: all), then on to the marker */
} ff_restart_plan;

/* A plan for the window [y0, ...) x [x0, x_end) of the image scaled by scale/8.
 * Decoding starts at the restart marker that opens the iMCU row holding row
 * y0 - 1 (the row above the window, whose chroma its first row is upsampled
 * with). Where each row is one restart interval, it also stops each row at
 * the first MCU boundary two columns past the window (the last column decoded
 * is upsampled without its right neighbour) and skips on to the next marker. Called after jpeg_read_header on
 * the whole JPEG, when the source is at its first entropy-coded byte. Returns 0
 * (decode it all, as without markers) where the JPEG has no restart interval,
 * one that is not a whole number of MCUs rows, a progressive or multi-scan
 * JPEG, nothing to skip, or markers that are not where the header says (libjpeg
 * then reads it all and reports what is wrong). */
static int ff_jpeg_restart_plan(ff_jpeg* j, const uint8_t* data, size_t size, int scale,
                                int y0, int x_end, ff_restart_plan* plan)
{
    struct jpeg_decompress_struct* cinfo = &j->cinfo;
    const uint8_t* p = j->src.pub.next_input_byte;
    const uint8_t* end = data + size;
    long mcus_per_row, seen = 0, mcu_width, needed;
    if (cinfo->restart_interval == 0 || cinfo->progressive_mode ||
        cinfo->comps_in_scan != cinfo->num_components || y0 < 0)
        return 0;
    if (cinfo->num_components == 1 &&
        (cinfo->comp_info[0].h_samp_factor != 1 || cinfo->comp_info[0].v_samp_factor != 1))
        return 0;
    mcu_width = 8L * cinfo->max_h_samp_factor;
    mcus_per_row = ((long)cinfo->image_width + mcu_width - 1) / mcu_width;
    if (mcus_per_row % (long)cinfo->restart_interval != 0)
        return 0;
    plan->row = y0 > 0 ? (y0 - 1) / (cinfo->max_v_samp_factor * scale) : 0;
    plan->markers = (long)plan->row * (mcus_per_row / (long)cinfo->restart_interval);
    plan->mcus = 0;
    /* The frame's last column is upsampled without its right neighbour: it must
     * lie past the window's extra column (x_end), so the frame ends at least two
     * columns past the window (scaled), in whole MCUs of the full image; and it
     * is at least 8 columns wide, since libjpeg upsamples a component of 2
     * columns or fewer another way (jdsample.c). */
    needed = (long)(x_end + 2 > 8 ? x_end + 2 : 8);
    needed = (needed * 8 + scale - 1) / scale;
    needed = (needed + mcu_width - 1) / mcu_width;
    if ((long)cinfo->restart_interval == mcus_per_row && needed < mcus_per_row)
        plan->mcus = (int)needed;
    if (plan->row == 0 && plan->mcus == 0)
        return 0;
    if (p < data || p > end)
        return 0;
    while (seen < plan->markers) {
        p = (const uint8_t*)memchr(p, 0xFF, (size_t)(end - p));
        if (p == NULL)
            return 0;
        while (p < end && *p == 0xFF)  /* fill bytes */
            p++;
        if (p == end)
            return 0;
        if (*p >= 0xD0 && *p <= 0xD7) {
            if ((*p & 7) != (seen & 7))
                return 0;
            seen++;
        } else if (*p != 0) {  /* 0xFF00 is a stuffed 0xFF; any other marker ends the scan */
            return 0;
        }
        p++;
    }
    plan->resume = p;
    return 1;
}

/* j->header: the first `length` bytes of data (the markers up to the entropy-
 * coded data) with every frame header's height set to `height` and, with
 * `mcus`, its width to `width` and every restart interval to `mcus`.
 * FF_JPEG_ERROR when the segments cannot be walked to the scan header or lack
 * a frame header (or a restart interval, with `mcus`); the caller also checks
 * what libjpeg reads from the copy. */
static int ff_jpeg_copy_header(ff_jpeg* j, const uint8_t* data, size_t length, int height,
                               int width, int mcus)
{
    size_t pos = 2;  /* after SOI */
    int frame = 0, interval = mcus == 0;
    if (length > j->header_capacity) {
        uint8_t* grown = (uint8_t*)realloc(j->header, length);
        if (grown == NULL)
            return FF_JPEG_NOMEM;
        j->header = grown;
        j->header_capacity = length;
    }
    memcpy(j->header, data, length);
    while (pos + 4 <= length) {
        uint8_t* segment = j->header + pos;
        if (segment[0] != 0xFF)
            return FF_JPEG_ERROR;
        if (segment[1] == 0xFF) {  /* a fill byte */
            pos++;
            continue;
        }
        if (segment[1] == 0x01 || (segment[1] >= 0xD0 && segment[1] <= 0xD8)) {
            pos += 2;  /* TEM, RSTn, SOI: no length */
            continue;
        }
        if (segment[1] == 0xDA)  /* the scan header: the last before the data */
            break;
        if (segment[1] >= 0xC0 && segment[1] <= 0xCF && segment[1] != 0xC4 &&
            segment[1] != 0xC8 && segment[1] != 0xCC && pos + 9 <= length) {
            /* SOFn: length, precision, height, width, ... */
            segment[5] = (uint8_t)(height >> 8);
            segment[6] = (uint8_t)(height & 0xFF);
            if (mcus) {
                segment[7] = (uint8_t)(width >> 8);
                segment[8] = (uint8_t)(width & 0xFF);
            }
            frame = 1;
        } else if (segment[1] == 0xDD && mcus && pos + 6 <= length) {  /* DRI: length, interval */
            segment[4] = (uint8_t)(mcus >> 8);
            segment[5] = (uint8_t)(mcus & 0xFF);
            interval = 1;
        }
        pos += 2 + (((size_t)segment[2] << 8) | segment[3]);
    }
    return frame && interval ? FF_JPEG_OK : FF_JPEG_ERROR;
}

/* Decode rows [y0, y0 + h) and at least columns [x0, x0 + w) of the JPEG at
 * data, scaled by scale/8, into j->pixels as RGB: the same pixels as a
 * decode of the whole image at that scale. The columns decoded are
 * [j->x_offset, j->x_offset + j->columns): one more on each side, and on the
 * left back to an iMCU column's start. Rows below the window are never
 * decoded. Rows above it are entropy-decoded and skipped; with `restarts` and a
 * JPEG that has a restart marker at each MCU row (fastforward's writer makes
 * them so), decoding starts at the marker above the window instead, and each
 * row stops just past the window (see ff_jpeg_restart_plan) and skips to the
 * next row's marker:
 * libjpeg reads a copy of the header whose image starts at that iMCU row and
 * is that many MCUs wide, then the data after the marker (j->restart_row and
 * j->restart_mcus say where it started and how many MCUs a row it decoded).
 *
 * The image must be height x width (FF_JPEG_SIZE otherwise, with the header's
 * size in j->image_height, j->image_width); the window must lie inside the
 * scaled image (ceil(height * scale / 8) x ceil(width * scale / 8)).
 */
static int ff_jpeg_decode_window(ff_jpeg* j, const uint8_t* data, size_t size, int height,
                                 int width, int scale, int fast_idct, int restarts, int y0,
                                 int h, int x0, int w)
{
    struct jpeg_decompress_struct* cinfo = &j->cinfo;
    /* after a longjmp only cinfo is read, which is set before the setjmp */
    int cmyk = 0;
    JDIMENSION xoffset = (JDIMENSION)x0, columns = (JDIMENSION)w;
    size_t stride, channels;
    int r, code;
    j->message[0] = 0;
    if (setjmp(j->err.jump)) {
        code = ff_jpeg_failure((j_common_ptr)cinfo);
        jpeg_abort_decompress(cinfo);
        return code;
    }
    j->own_huffman = 0;
    ff_jpeg_read_whole_header(j, data, size);
    j->restart_row = j->restart_mcus = 0;
    if (j->image_height != height || j->image_width != width) {
        jpeg_abort_decompress(cinfo);
        return FF_JPEG_SIZE;
    }
    if (restarts) {
        ff_restart_plan plan;
        if (ff_jpeg_restart_plan(j, data, size, scale, y0, x0 + w, &plan)) {
            size_t length = (size_t)(j->src.pub.next_input_byte - data);
            int skipped = plan.row * cinfo->max_v_samp_factor * 8;  /* rows of the full image */
            int narrow = plan.mcus * cinfo->max_h_samp_factor * 8;
            code = ff_jpeg_copy_header(j, data, length, height - skipped, narrow, plan.mcus);
            if (code == FF_JPEG_NOMEM) {
                jpeg_abort_decompress(cinfo);
                return code;
            }
            if (code == FF_JPEG_OK) {
                unsigned int interval = cinfo->restart_interval;
                int mcu_rows = plan.row * cinfo->max_v_samp_factor * scale;
                jpeg_abort_decompress(cinfo);
                ff_src_set(j, j->header, length, plan.resume,
                           (size_t)(data + size - plan.resume), (int)(plan.markers & 7));
                j->err.skip_to_markers = plan.mcus != 0;
                jpeg_read_header(cinfo, TRUE);
                if ((int)cinfo->image_height == height - skipped &&
                    (int)cinfo->image_width == (plan.mcus ? narrow : width) &&
                    cinfo->restart_interval == (plan.mcus ? (unsigned int)plan.mcus : interval)) {
                    y0 -= mcu_rows;
                    j->restart_row = plan.row;
                    j->restart_mcus = plan.mcus;
                } else {  /* the copy did not say what was meant: decode it all */
                    jpeg_abort_decompress(cinfo);
                    ff_jpeg_read_whole_header(j, data, size);
                }
            }
        }
    }
    if (cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) {
        cinfo->out_color_space = JCS_CMYK;
        cmyk = 1;
    } else {
        /* YCbCr, RGB and grayscale all come out as RGB */
        cinfo->out_color_space = JCS_RGB;
    }
    cinfo->scale_num = (unsigned int)scale;
    cinfo->scale_denom = 8;
    cinfo->dct_method = fast_idct ? JDCT_IFAST : JDCT_ISLOW;
    cinfo->do_fancy_upsampling = TRUE;
    jpeg_start_decompress(cinfo);
    ff_jpeg_use_own_huffman(j);
    /* One more column on each side (inside the image): the chroma upsampling of
     * a window's edge column lacks its outer neighbour, so with it the window's
     * columns are exactly those of a whole-image decode. */
    if (xoffset > 0) {
        xoffset--;
        columns++;
    }
    if (xoffset + columns < cinfo->output_width)
        columns++;
    /* and at least 4 columns: a window of 2 (one chroma column) is upsampled
     * differently */
    while (columns < 4 && xoffset + columns < cinfo->output_width)
        columns++;
    while (columns < 4 && xoffset > 0) {
        xoffset--;
        columns++;
    }
    jpeg_crop_scanline(cinfo, &xoffset, &columns);
    channels = cmyk ? 4 : 3;
    stride = (size_t)columns * channels;
    /* 16 bytes of slack: the resize pass's SIMD loads read past a row's end */
    code = ff_jpeg_reserve(j, stride * (size_t)h + 64, (size_t)h);
    if (code != FF_JPEG_OK) {
        jpeg_abort_decompress(cinfo);
        return code;
    }
    for (r = 0; r < h; r++)
        j->rows[r] = j->pixels + (size_t)r * stride;
    if (y0 > 0 && jpeg_skip_scanlines(cinfo, (JDIMENSION)y0) != (JDIMENSION)y0) {
        jpeg_abort_decompress(cinfo);
        strcpy(j->message, "fewer rows than the header says");
        return FF_JPEG_ERROR;
    }
    for (r = 0; r < h;) {
        JDIMENSION got = jpeg_read_scanlines(cinfo, j->rows + r, (JDIMENSION)(h - r));
        if (got == 0) {
            jpeg_abort_decompress(cinfo);
            strcpy(j->message, "fewer rows than the header says");
            return FF_JPEG_ERROR;
        }
        r += (int)got;
    }
    /* the rows below the window are not needed: stop without decoding them */
    jpeg_abort_decompress(cinfo);
    if (cmyk) {
        for (r = 0; r < h; r++)
            ff_cmyk_to_rgb(j->rows[r], (int)columns);
        /* rows keep their 4-channel stride; the first 3*columns bytes are RGB */
    }
    j->x_offset = (int)xoffset;
    j->columns = (int)columns;
    j->stride = stride;
    return FF_JPEG_OK;
}

/* Decode a YCbCr or grayscale JPEG at the DCT scale scale/8 into one plane
 * per component, without chroma upsampling or colour conversion (libjpeg's
 * raw data output): each chroma plane at its own resolution, or, below 8/8,
 * at the resolution libjpeg-turbo gives it (it scales subsampled chroma less,
 * up to the luma's). plane_span_* say how much of each plane the image covers. Returns
 * FF_JPEG_UNSUPPORTED, having decoded nothing, for other colour spaces
 * (RGB, CMYK, YCCK) and for samplings other than luma 1 or 2 times each
 * chroma component in each direction. Each plane's rows are padded to whole
 * blocks and have at least 16 bytes of slack (the resize pass reads past a
 * row's end). */
static int ff_jpeg_decode_planes(ff_jpeg* j, const uint8_t* data, size_t size, int scale,
                                 int fast_idct)
{
    struct jpeg_decompress_struct* cinfo = &j->cinfo;
    size_t offset[3], total = 0, rows = 0;
    JSAMPARRAY first[3];
    int c, code, n, per_row[3];
    j->message[0] = 0;
    j->planes = 0;
    j->own_huffman = 0;
    if (setjmp(j->err.jump)) {
        code = ff_jpeg_failure((j_common_ptr)cinfo);
        jpeg_abort_decompress(cinfo);
        return code;
    }
    ff_jpeg_read_whole_header(j, data, size);
    n = cinfo->num_components;
    if (!((n == 1 && cinfo->jpeg_color_space == JCS_GRAYSCALE) ||
          (n == 3 && cinfo->jpeg_color_space == JCS_YCbCr))) {
        jpeg_abort_decompress(cinfo);
        return FF_JPEG_UNSUPPORTED;
    }
    for (c = 1; c < n; c++) {
        jpeg_component_info* comp = &cinfo->comp_info[c];
        if (comp->h_samp_factor != 1 || comp->v_samp_factor != 1 ||
            cinfo->comp_info[0].h_samp_factor > 2 || cinfo->comp_info[0].v_samp_factor > 2) {
            jpeg_abort_decompress(cinfo);
            return FF_JPEG_UNSUPPORTED;
        }
    }
    cinfo->raw_data_out = TRUE;
    cinfo->scale_num = (unsigned int)scale;
    cinfo->scale_denom = 8;
    cinfo->dct_method = fast_idct ? JDCT_IFAST : JDCT_ISLOW;
    jpeg_start_decompress(cinfo);
    ff_jpeg_use_own_huffman(j);
    for (c = 0; c < n; c++) {
        jpeg_component_info* comp = &cinfo->comp_info[c];
        per_row[c] = comp->v_samp_factor * FF_DCT_ROWS(comp);  /* rows per iMCU row */
        j->plane_stride[c] = ((size_t)comp->width_in_blocks * FF_DCT_COLUMNS(comp) + 16 + 15)
                             & ~(size_t)15;
        offset[c] = total;
        total += j->plane_stride[c] * cinfo->total_iMCU_rows * per_row[c];
        rows += cinfo->total_iMCU_rows * per_row[c];
        j->plane_height[c] = (int)comp->downsampled_height;
        j->plane_width[c] = (int)comp->downsampled_width;
        /* the sizes above are rounded up: where a side is odd (in the component's
         * samples) the last sample stands for part of one */
        j->plane_span_height[c] = (double)cinfo->image_height * comp->v_samp_factor *
                                  FF_DCT_ROWS(comp) / (cinfo->max_v_samp_factor * DCTSIZE);
        j->plane_span_width[c] = (double)cinfo->image_width * comp->h_samp_factor *
                                 FF_DCT_COLUMNS(comp) / (cinfo->max_h_samp_factor * DCTSIZE);
    }
    code = ff_jpeg_reserve(j, total + 64, rows);
    if (code != FF_JPEG_OK) {
        jpeg_abort_decompress(cinfo);
        return code;
    }
    rows = 0;
    for (c = 0; c < n; c++) {
        size_t r, count = cinfo->total_iMCU_rows * per_row[c];
        j->plane[c] = j->pixels + offset[c];
        first[c] = j->rows + rows;
        for (r = 0; r < count; r++)
            j->rows[rows + r] = j->plane[c] + r * j->plane_stride[c];
        rows += count;
    }
    for (JDIMENSION imcu = 0; cinfo->output_scanline < cinfo->output_height; imcu++) {
        JSAMPARRAY at[3];
        for (c = 0; c < n; c++)
            at[c] = first[c] + (size_t)imcu * per_row[c];
        if (imcu >= cinfo->total_iMCU_rows ||
            jpeg_read_raw_data(cinfo, at,
                               (JDIMENSION)(cinfo->max_v_samp_factor * FF_MIN_DCT_ROWS(cinfo)))
                == 0) {
            jpeg_abort_decompress(cinfo);
            strcpy(j->message, "fewer rows than the header says");
            return FF_JPEG_ERROR;
        }
    }
    /* every row is read: read on to the image's end, as jpeg_finish_decompress
     * does, so that data left over before its last marker is an error, as libjpeg
     * warns of it (damaged data can decode to every row and leave bytes over).
     * fastforward's Huffman decoder reads every byte up to the marker it runs
     * into (it reads ahead), so what it holds past the last block's padding
     * (under 8 bits) was left over; libjpeg, which reads ahead less, finds some
     * of those bytes and not others (a decline here is not a verdict: the
     * writer then decodes to RGB, with libjpeg's). It hands libjpeg the
     * marker it ran into. */
    if (j->own_huffman) {
        if (j->huff.count >= 8) {
            snprintf(j->message, sizeof(j->message),
                     "Corrupt JPEG data: %d extraneous bytes after the last block",
                     j->huff.count / 8);
            jpeg_abort_decompress(cinfo);
            return FF_JPEG_ERROR;
        }
        if (j->huff.marker > 0 && j->huff.marker < FF_HUFF_END)
            cinfo->unread_marker = j->huff.marker;
    }
    jpeg_finish_decompress(cinfo);
    j->planes = n;
    return FF_JPEG_OK;
}

/* Fill a plane's padding, columns width.. and rows height.. of a padded_height x
 * padded_width plane, with copies of its last column and row (what libjpeg
 * does to an image that is not a whole number of blocks). */
static void ff_pad_plane(uint8_t* plane, size_t stride, int height, int width,
                         int padded_height, int padded_width)
{
    int r;
    for (r = 0; r < height; r++) {
        uint8_t* row = plane + (size_t)r * stride;
        memset(row + width, row[width - 1], (size_t)(padded_width - width));
    }
    for (r = height; r < padded_height; r++)
        memcpy(plane + (size_t)r * stride, plane + (size_t)(height - 1) * stride,
               (size_t)padded_width);
}

/* The encoder's output: one malloc'ed buffer, doubled as it fills (jpeg_mem_dest
 * frees its first buffer when it grows and says which is live only at the end,
 * so an error half-way could not free the right one). */
typedef struct {
    struct jpeg_destination_mgr pub;
    unsigned char* buffer;
    size_t capacity;
} ff_jpeg_dest;

static void ff_dest_init(j_compress_ptr cinfo)
{
    ff_jpeg_dest* dest = (ff_jpeg_dest*)cinfo->dest;
    dest->pub.next_output_byte = dest->buffer;
    dest->pub.free_in_buffer = dest->capacity;
}

static boolean ff_dest_grow(j_compress_ptr cinfo)
{
    /* called when the buffer is full: all `capacity` bytes are used */
    ff_jpeg_dest* dest = (ff_jpeg_dest*)cinfo->dest;
    unsigned char* grown = (unsigned char*)realloc(dest->buffer, dest->capacity * 2);
    if (grown == NULL)
        ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 0);  /* "Insufficient memory (case 0)" */
    dest->buffer = grown;
    dest->pub.next_output_byte = grown + dest->capacity;
    dest->pub.free_in_buffer = dest->capacity;
    dest->capacity *= 2;
    return TRUE;
}

static void ff_dest_term(j_compress_ptr cinfo)
{
    (void)cinfo;
}

/* Encode as a baseline JPEG, as Pillow does (jpeg_set_defaults,
 * jpeg_set_quality, accurate DCT), with chroma sampled h_samp x v_samp and,
 * with restart_rows > 0, a restart marker every restart_rows MCU rows. The
 * input is either an RGB image (raw = 0: planes[0], rows strides[0] bytes
 * apart) or its Y, Cb and Cr planes already sampled so (raw = 1), each a whole
 * number of MCUs, padding filled (ff_pad_plane). *out is malloc'ed (the caller
 * frees it); on an error it is NULL. */
static int ff_jpeg_compress(const uint8_t* const* planes, const size_t* strides, int raw,
                            int height, int width, int quality, int h_samp, int v_samp,
                            int restart_rows, unsigned char** out, unsigned long* out_size,
                            char* message)
{
    struct jpeg_compress_struct cinfo;
    ff_jpeg_error_mgr err;
    ff_jpeg_dest dest;
    JSAMPROW rows[3][16];
    int c;
    *out = NULL;
    *out_size = 0;
    message[0] = 0;
    dest.capacity = (size_t)height * (size_t)width / 2 + 4096;
    dest.buffer = (unsigned char*)malloc(dest.capacity);
    if (dest.buffer == NULL) {
        strcpy(message, "Insufficient memory");
        return FF_JPEG_NOMEM;
    }
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = ff_jpeg_error_exit;
    err.pub.emit_message = ff_jpeg_emit_message;
    err.pub.output_message = ff_jpeg_output_message;
    err.message = message;
    err.skip_to_markers = 0;
    if (setjmp(err.jump)) {
        int code = ff_jpeg_failure((j_common_ptr)&cinfo);
        jpeg_destroy_compress(&cinfo);
        free(dest.buffer);  /* dest's address is libjpeg's: it is in memory, current */
        return code;
    }
    jpeg_create_compress(&cinfo);
    dest.pub.init_destination = ff_dest_init;
    dest.pub.empty_output_buffer = ff_dest_grow;
    dest.pub.term_destination = ff_dest_term;
    cinfo.dest = &dest.pub;
    cinfo.image_width = (JDIMENSION)width;
    cinfo.image_height = (JDIMENSION)height;
    cinfo.input_components = 3;
    cinfo.in_color_space = raw ? JCS_YCbCr : JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    cinfo.comp_info[0].h_samp_factor = h_samp;
    cinfo.comp_info[0].v_samp_factor = v_samp;
    cinfo.restart_in_rows = restart_rows;
    cinfo.raw_data_in = raw ? TRUE : FALSE;
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JDIMENSION n = cinfo.image_height - cinfo.next_scanline, r;
        if (raw) {  /* one MCU row: v_samp * 8 rows of Y, 8 of each chroma plane */
            JSAMPARRAY at[3] = {rows[0], rows[1], rows[2]};
            for (c = 0; c < 3; c++) {
                int count = c == 0 ? v_samp * DCTSIZE : DCTSIZE;
                size_t top = c == 0 ? cinfo.next_scanline : cinfo.next_scanline / v_samp;
                for (r = 0; r < (JDIMENSION)count; r++)
                    rows[c][r] = (JSAMPROW)(planes[c] + (top + r) * strides[c]);
            }
            jpeg_write_raw_data(&cinfo, at, (JDIMENSION)(v_samp * DCTSIZE));
            continue;
        }
        if (n > 16)
            n = 16;
        for (r = 0; r < n; r++)
            rows[0][r] = (JSAMPROW)(planes[0] + (size_t)(cinfo.next_scanline + r) * strides[0]);
        jpeg_write_scanlines(&cinfo, rows[0], n);
    }
    jpeg_finish_compress(&cinfo);
    *out = dest.buffer;
    *out_size = (unsigned long)(dest.capacity - dest.pub.free_in_buffer);
    jpeg_destroy_compress(&cinfo);
    return FF_JPEG_OK;
}

/* An RGB image, rows `stride` bytes apart (see ff_jpeg_compress). */
static int ff_jpeg_encode(const uint8_t* pixels, int height, int width, size_t stride,
                          int quality, int h_samp, int v_samp, int restart_rows,
                          unsigned char** out, unsigned long* out_size, char* message)
{
    return ff_jpeg_compress(&pixels, &stride, 0, height, width, quality, h_samp, v_samp,
                            restart_rows, out, out_size, message);
}

#endif
