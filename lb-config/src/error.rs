//! Diagnostics: `file:line:col: message`.

use std::fmt;
use std::ops::Range;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file path as given to [`crate::load`] or [`crate::parse_str`].
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path, self.line, self.col, self.message
        )
    }
}

/// Every problem found in a configuration file, sorted by position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Diagnostic>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Turns byte offsets into 1-based line and column numbers.
#[derive(Debug)]
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset of the start of each line.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    /// 1-based (line, column) of a byte offset; columns count characters.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.starts[line];
        let col = self.text[start..offset].chars().count() + 1;
        (line + 1, col)
    }
}

/// Collects diagnostics for one file.
#[derive(Debug)]
pub(crate) struct Sink<'a> {
    path: &'a str,
    index: LineIndex<'a>,
    diags: Vec<(usize, Diagnostic)>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(text: &'a str, path: &'a str) -> Self {
        Sink {
            path,
            index: LineIndex::new(text),
            diags: Vec::new(),
        }
    }

    pub(crate) fn line_of(&self, span: &Range<usize>) -> usize {
        self.index.position(span.start).0
    }

    pub(crate) fn error(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, col) = self.index.position(span.start);
        let d = Diagnostic {
            path: self.path.to_string(),
            line,
            col,
            message: message.into(),
        };
        self.diags.push((span.start, d));
    }

    pub(crate) fn len(&self) -> usize {
        self.diags.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.diags.is_empty()
    }

    pub(crate) fn finish(self) -> ConfigErrors {
        let mut diags = self.diags;
        // Stable: problems at one position keep the order they were found in.
        diags.sort_by_key(|(offset, _)| *offset);
        diags.dedup_by(|a, b| a.1 == b.1);
        ConfigErrors(diags.into_iter().map(|(_, d)| d).collect())
    }
}
