//! Errors and warnings that point at a file, a line and a column.

use std::{fmt, path::PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not tied to a line (a missing file, say).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        if self.line == 0 {
            write!(f, "{}: {severity}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}:{}: {severity}: {}", self.file.display(), self.line, self.column, self.message)
        }
    }
}

/// A policy that cannot be used, with every reason found.
#[derive(Debug)]
pub struct PolicyErrors {
    pub diagnostics: Vec<Diagnostic>,
}

impl PolicyErrors {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error)
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors().count();
        for diagnostic in &self.diagnostics {
            writeln!(f, "{diagnostic}")?;
        }
        write!(f, "policy rejected: {count} error{}; nothing was changed", if count == 1 { "" } else { "s" })
    }
}

impl std::error::Error for PolicyErrors {}

/// Turns byte offsets into 1-based line and column numbers.
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    pub fn locate(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&start| start <= offset);
        let column = offset - self.starts[line - 1] + 1;
        (line, column)
    }
}

/// Collects diagnostics for one file.
pub struct Reporter {
    file: PathBuf,
    index: LineIndex,
    pub diagnostics: Vec<Diagnostic>,
}

impl Reporter {
    pub fn new(file: PathBuf, text: &str) -> Self {
        Self { file, index: LineIndex::new(text), diagnostics: Vec::new() }
    }

    pub fn error_at(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        self.push(Severity::Error, span.start, message.into());
    }

    pub fn warning_at(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        self.push(Severity::Warning, span.start, message.into());
    }

    /// A diagnostic about another file (a blocklist file), with its own line number.
    pub fn push_external(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    /// A diagnostic about a whole line (a rule), at its first column.
    pub fn at_line(&mut self, severity: Severity, line: usize, message: String) {
        self.diagnostics.push(Diagnostic { severity, file: self.file.clone(), line, column: 1, message });
    }

    pub fn line_of(&self, offset: usize) -> usize {
        self.index.locate(offset).0
    }

    fn push(&mut self, severity: Severity, offset: usize, message: String) {
        let (line, column) = self.index.locate(offset);
        self.diagnostics.push(Diagnostic { severity, file: self.file.clone(), line, column, message });
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns() {
        let index = LineIndex::new("ab\ncd\n\nef");
        assert_eq!(index.locate(0), (1, 1));
        assert_eq!(index.locate(1), (1, 2));
        assert_eq!(index.locate(3), (2, 1));
        assert_eq!(index.locate(6), (3, 1));
        assert_eq!(index.locate(8), (4, 2));
    }
}
