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

typedef struct {
    struct jpeg_decompress_struct cinfo;
    ff_jpeg_error_mgr err;
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
    j->pixels = NULL;
    j->rows = NULL;
    j->capacity = j->row_capacity = 0;
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
    int r, code;
    j->message[0] = 0;
    if (setjmp(j->err.jump)) {
        jpeg_abort_decompress(cinfo);
        return FF_JPEG_ERROR;
    }
    jpeg_mem_src(cinfo, data, (unsigned long)size);
    jpeg_read_header(cinfo, TRUE);
    j->image_height = (int)cinfo->image_height;
    j->image_width = (int)cinfo->image_width;
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

#endif
