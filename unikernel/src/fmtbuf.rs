//! Formatting into a fixed buffer, for paths that must not allocate (panics,
//! out-of-memory reports).

/// A `core::fmt::Write` into a byte buffer; output past its end is dropped.
pub struct FmtBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> FmtBuf<'a> {
    /// Writes into `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        FmtBuf { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.len
    }
}

impl core::fmt::Write for FmtBuf<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
