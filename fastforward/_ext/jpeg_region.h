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

enum {
    FF_JPEG_OK = 0,
    FF_JPEG_ERROR = 1,   /* libjpeg's message is in ff_jpeg.message */
    FF_JPEG_SIZE = 2,    /* the header's size is not the expected one */
    FF_JPEG_NOMEM = 3,
};

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char* message; /* JMSG_LENGTH_MAX bytes */
} ff_jpeg_error_mgr;

/* The data source: one buffer, or a header and then the entropy-coded data
 * from a restart marker on (see ff_jpeg_decode_window). */
typedef struct {
    struct jpeg_source_mgr pub;
    const uint8_t* rest;  /* the second piece, served once the first is read */
    size_t rest_size;
    int shift;            /* restart markers are numbered this much ahead (mod 8) */
    uint8_t eoi[2];
} ff_jpeg_source;

typedef struct {
    size_t sof_height;     /* offset of the frame header's 2-byte image height */
    size_t entropy;        /* offset of the first byte after the (first) SOS segment */
    int height, width;
    int restart_interval;  /* in MCUs; 0: no restart markers */
    int max_h, max_v;      /* largest sampling factors */
    int components, scan_components;
} ff_jpeg_layout;

typedef struct {
    struct jpeg_decompress_struct cinfo;
    ff_jpeg_error_mgr err;
    ff_jpeg_source src;
    uint8_t* header;      /* a copy of the header with the height changed */
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
    int restarted;                  /* decoding began at a restart marker */
} ff_jpeg;

static void ff_jpeg_error_exit(j_common_ptr cinfo)
{
    ff_jpeg_error_mgr* err = (ff_jpeg_error_mgr*)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->message);
    longjmp(err->jump, 1);
}

static void ff_jpeg_emit_message(j_common_ptr cinfo, int level)
{
    if (level < 0)  /* a warning: the data is corrupt */
        ff_jpeg_error_exit(cinfo);
    /* trace messages (level >= 0) are dropped */
}

static void ff_jpeg_output_message(j_common_ptr cinfo)
{
    (void)cinfo;  /* never print */
}

static void ff_source_init(j_decompress_ptr cinfo)
{
    (void)cinfo;
}

static boolean ff_source_fill(j_decompress_ptr cinfo)
{
    ff_jpeg_source* src = (ff_jpeg_source*)cinfo->src;
    if (src->rest != NULL) {
        src->pub.next_input_byte = src->rest;
        src->pub.bytes_in_buffer = src->rest_size;
        src->rest = NULL;
        return TRUE;
    }
    /* past the end: a warning (so an error here), then an EOI as libjpeg expects */
    cinfo->err->msg_code = JWRN_JPEG_EOF;
    (*cinfo->err->emit_message)((j_common_ptr)cinfo, -1);
    src->eoi[0] = 0xFF;
    src->eoi[1] = JPEG_EOI;
    src->pub.next_input_byte = src->eoi;
    src->pub.bytes_in_buffer = 2;
    return TRUE;
}

static void ff_source_skip(j_decompress_ptr cinfo, long n)
{
    struct jpeg_source_mgr* src = cinfo->src;
    if (n <= 0)
        return;
    while (n > (long)src->bytes_in_buffer) {
        n -= (long)src->bytes_in_buffer;
        ff_source_fill(cinfo);
    }
    src->next_input_byte += n;
    src->bytes_in_buffer -= (size_t)n;
}

/* A restart marker that is not the one libjpeg counted: accepted when it is
 * exactly `shift` ahead, as every marker is when decoding starts at a later
 * restart interval; otherwise libjpeg's own recovery (a warning: an error). */
static boolean ff_source_resync(j_decompress_ptr cinfo, int desired)
{
    ff_jpeg_source* src = (ff_jpeg_source*)cinfo->src;
    if (cinfo->unread_marker == JPEG_RST0 + ((desired + src->shift) & 7)) {
        cinfo->unread_marker = 0;
        return TRUE;
    }
    return jpeg_resync_to_restart(cinfo, desired);
}

static void ff_source_term(j_decompress_ptr cinfo)
{
    (void)cinfo;
}

static void ff_source_set(ff_jpeg* j, const uint8_t* first, size_t first_size,
                          const uint8_t* rest, size_t rest_size, int shift)
{
    ff_jpeg_source* src = &j->src;
    src->pub.init_source = ff_source_init;
    src->pub.fill_input_buffer = ff_source_fill;
    src->pub.skip_input_data = ff_source_skip;
    src->pub.resync_to_restart = ff_source_resync;
    src->pub.term_source = ff_source_term;
    src->pub.next_input_byte = first;
    src->pub.bytes_in_buffer = first_size;
    src->rest = rest;
    src->rest_size = rest_size;
    src->shift = shift;
    j->cinfo.src = &src->pub;
}

/* The markers up to the first scan of a baseline or extended sequential,
 * Huffman-coded JPEG. Returns 0 for anything else (progressive, arithmetic,
 * lossless, malformed): those are decoded the ordinary way, which reports
 * what is wrong. */
static int ff_jpeg_layout_of(const uint8_t* d, size_t n, ff_jpeg_layout* out)
{
    size_t p = 2;
    int have_frame = 0;
    memset(out, 0, sizeof(*out));
    if (n < 4 || d[0] != 0xFF || d[1] != 0xD8)
        return 0;
    for (;;) {
        unsigned marker, length, i;
        const uint8_t* seg;
        if (p + 4 > n || d[p] != 0xFF)
            return 0;
        while (p + 1 < n && d[p + 1] == 0xFF)  /* fill bytes */
            p++;
        if (p + 4 > n)
            return 0;
        marker = d[p + 1];
        length = ((unsigned)d[p + 2] << 8) | d[p + 3];
        if (length < 2 || p + 2 + length > n)
            return 0;
        seg = d + p + 4;
        switch (marker) {
        case 0xC0:  /* baseline */
        case 0xC1:  /* extended sequential, Huffman */
            if (length < 8 || length < 8 + 3u * seg[5] || seg[0] != 8 || seg[5] < 1 || seg[5] > 4)
                return 0;
            out->sof_height = p + 5;
            out->height = (seg[1] << 8) | seg[2];
            out->width = (seg[3] << 8) | seg[4];
            out->components = seg[5];
            out->max_h = out->max_v = 1;
            for (i = 0; i < seg[5]; i++) {
                int h = seg[6 + 3 * i + 1] >> 4, v = seg[6 + 3 * i + 1] & 15;
                if (h < 1 || v < 1)
                    return 0;
                out->max_h = h > out->max_h ? h : out->max_h;
                out->max_v = v > out->max_v ? v : out->max_v;
            }
            have_frame = 1;
            break;
        case 0xC2: case 0xC3: case 0xC5: case 0xC6: case 0xC7:
        case 0xC9: case 0xCA: case 0xCB: case 0xCD: case 0xCE: case 0xCF:
            return 0;  /* progressive, lossless, hierarchical, arithmetic */
        case 0xDD:  /* DRI */
            if (length < 4)
                return 0;
            out->restart_interval = (seg[0] << 8) | seg[1];
            break;
        case 0xDA:  /* SOS */
            if (!have_frame)
                return 0;
            out->scan_components = seg[0];
            out->entropy = p + 2 + length;
            return 1;
        default:
            if (marker < 0xC0 || marker == 0xD8 || marker == 0xD9 ||
                (marker >= 0xD0 && marker <= 0xD7))
                return 0;
        }
        p += 2 + length;
    }
}

/* The offset just after the count-th restart marker of the entropy-coded data
 * starting at `from`, or 0 when it is not there with the expected number. */
static size_t ff_jpeg_after_restart(const uint8_t* d, size_t n, size_t from, int count)
{
    size_t p = from;
    int seen = 0;
    while (seen < count) {
        const uint8_t* ff = p + 1 < n ? (const uint8_t*)memchr(d + p, 0xFF, n - p - 1) : NULL;
        unsigned m;
        if (ff == NULL)
            return 0;
        p = (size_t)(ff - d);
        m = d[p + 1];
        if (m == 0x00) {          /* a stuffed 0xFF data byte */
            p += 2;
        } else if (m == 0xFF) {   /* a fill byte */
            p += 1;
        } else if (m >= 0xD0 && m <= 0xD7 && (int)(m - 0xD0) == (seen & 7)) {
            p += 2;
            seen++;
        } else {
            return 0;
        }
    }
    return p;
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
    j->header_capacity = 0;
    j->capacity = j->row_capacity = 0;
}

static int ff_jpeg_reserve_header(ff_jpeg* j, size_t nbytes)
{
    if (nbytes > j->header_capacity) {
        uint8_t* grown = (uint8_t*)realloc(j->header, nbytes);
        if (grown == NULL)
            return FF_JPEG_NOMEM;
        j->header = grown;
        j->header_capacity = nbytes;
    }
    return FF_JPEG_OK;
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

/* Decode rows [y0, y0 + h) and at least columns [x0, x0 + w) of the JPEG at
 * data, scaled by scale/8, into j->pixels as RGB: the same pixels as a
 * decode of the whole image at that scale. The columns decoded are
 * [j->x_offset, j->x_offset + j->columns): one more on each side, and on the
 * left back to an iMCU column's start. Rows above the window are
 * entropy-decoded and skipped; rows below it are never decoded.
 *
 * The image must be height x width (FF_JPEG_SIZE otherwise, with the header's
 * size in j->image_height, j->image_width); the window must lie inside the
 * scaled image (ceil(height * scale / 8) x ceil(width * scale / 8)).
 */
static int ff_jpeg_decode_window(ff_jpeg* j, const uint8_t* data, size_t size, int height,
                                 int width, int scale, int fast_idct, int y0, int h, int x0,
                                 int w)
{
    struct jpeg_decompress_struct* cinfo = &j->cinfo;
    /* after a longjmp only cinfo is read, which is set before the setjmp */
    int cmyk = 0;
    JDIMENSION xoffset = (JDIMENSION)x0, columns = (JDIMENSION)w;
    size_t stride, channels;
    int r, code, above = 0, above_scaled = 0;
    ff_jpeg_layout layout;
    j->message[0] = 0;
    j->restarted = 0;
    /* With restart markers at the starts of MCU rows, entropy decoding can begin
     * at the last marker above the window instead of the image's first row:
     * libjpeg is given the header with the height reduced by the rows above
     * that marker, then the data from it on. One row of the window's context
     * stays above it (fancy upsampling reads the row above the window's
     * first), so the window's pixels are those of a whole-image decode. */
    if (y0 > 0 && ff_jpeg_layout_of(data, size, &layout) && layout.restart_interval > 0 &&
        layout.scan_components == layout.components && layout.height == height &&
        layout.width == width) {
        int mcu_width = 8 * layout.max_h, mcu_height = 8 * layout.max_v;
        int per_row = (width + mcu_width - 1) / mcu_width;
        if (layout.restart_interval % per_row == 0) {
            int band = layout.restart_interval / per_row * mcu_height;  /* rows per interval */
            int band_scaled = band * scale / 8;                           /* exact */
            int skip = (y0 - 1) / band_scaled;
            size_t from = skip > 0 ? ff_jpeg_after_restart(data, size, layout.entropy, skip) : 0;
            if (from > 0 && ff_jpeg_reserve_header(j, layout.entropy) == FF_JPEG_OK) {
                int rest = height - skip * band;
                memcpy(j->header, data, layout.entropy);
                j->header[layout.sof_height] = (uint8_t)(rest >> 8);
                j->header[layout.sof_height + 1] = (uint8_t)(rest & 255);
                ff_source_set(j, j->header, layout.entropy, data + from, size - from, skip & 7);
                above = skip * band;
                above_scaled = skip * band_scaled;
                j->restarted = 1;
            }
        }
    }
    if (!j->restarted)
        ff_source_set(j, data, size, NULL, 0, 0);
    if (setjmp(j->err.jump)) {
        jpeg_abort_decompress(cinfo);
        return FF_JPEG_ERROR;
    }
    jpeg_read_header(cinfo, TRUE);
    j->image_height = (int)cinfo->image_height + above;
    j->image_width = (int)cinfo->image_width;
    y0 -= above_scaled;
    if (j->image_height != height || j->image_width != width) {
        jpeg_abort_decompress(cinfo);
        return FF_JPEG_SIZE;
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

/* -- encoding ------------------------------------------------------------------ */

typedef struct {
    struct jpeg_compress_struct cinfo;
    ff_jpeg_error_mgr err;
    char message[JMSG_LENGTH_MAX];
    unsigned char* out;   /* libjpeg's (jpeg_mem_dest): free() it */
    unsigned long size;
} ff_jpeg_encoder;

/* Encode an RGB image as a baseline JPEG: 4:2:0, the given quality, the
 * default Huffman tables: the same bytes as simplejpeg (TurboJPEG); with
 * restart_rows > 0, a restart marker every restart_rows MCU rows.
 * On FF_JPEG_OK the stream is e->out (e->size bytes, to free()). */
static int ff_jpeg_encode(ff_jpeg_encoder* e, const uint8_t* rgb, int height, int width,
                          size_t stride, int quality, int restart_rows)
{
    struct jpeg_compress_struct* cinfo = &e->cinfo;
    JSAMPROW row;
    e->out = NULL;
    e->size = 0;
    e->message[0] = 0;
    cinfo->err = jpeg_std_error(&e->err.pub);
    e->err.pub.error_exit = ff_jpeg_error_exit;
    e->err.pub.emit_message = ff_jpeg_emit_message;
    e->err.pub.output_message = ff_jpeg_output_message;
    e->err.message = e->message;
    if (setjmp(e->err.jump)) {
        jpeg_destroy_compress(cinfo);
        free(e->out);
        e->out = NULL;
        return FF_JPEG_ERROR;
    }
    jpeg_create_compress(cinfo);
    jpeg_mem_dest(cinfo, &e->out, &e->size);
    cinfo->image_width = (JDIMENSION)width;
    cinfo->image_height = (JDIMENSION)height;
    cinfo->input_components = 3;
    cinfo->in_color_space = JCS_RGB;
    jpeg_set_defaults(cinfo);
    jpeg_set_quality(cinfo, quality, TRUE);
    cinfo->comp_info[0].h_samp_factor = 2;
    cinfo->comp_info[0].v_samp_factor = 2;
    cinfo->comp_info[1].h_samp_factor = cinfo->comp_info[1].v_samp_factor = 1;
    cinfo->comp_info[2].h_samp_factor = cinfo->comp_info[2].v_samp_factor = 1;
    /* TurboJPEG's choice: the fast DCT below quality 96 */
    cinfo->dct_method = quality >= 96 ? JDCT_ISLOW : JDCT_IFAST;
    cinfo->restart_in_rows = restart_rows;
    jpeg_start_compress(cinfo, TRUE);
    while (cinfo->next_scanline < cinfo->image_height) {
        row = (JSAMPROW)(rgb + (size_t)cinfo->next_scanline * stride);
        jpeg_write_scanlines(cinfo, &row, 1);
    }
    jpeg_finish_compress(cinfo);
    jpeg_destroy_compress(cinfo);
    return FF_JPEG_OK;
}

#endif
