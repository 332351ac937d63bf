//! Progress bars (indicatif) for the core's [`Reporter`]; only on a terminal.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use locald_core::progress::{Reporter, Silent};
use locald_core::Digest;

/// An overall bar and one bar per layer in flight.
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    bars: Mutex<Vec<Option<ProgressBar>>>,
    /// The total was not known up front: each layer adds its size when it starts.
    grow: bool,
}

/// A reporter for this terminal: bars when stderr is a TTY and neither `-q` nor
/// `NO_COLOR` asked for quiet, nothing otherwise.
/// `total` is the size of all the image's layer blobs (0: not known yet; layers
/// add their sizes as they start).
pub fn reporter(quiet: bool, total: u64) -> Arc<dyn Reporter> {
    let no_color = std::env::var_os(crate::env::NO_COLOR).is_some();
    if quiet {
        return Arc::new(Silent);
    }
    if no_color || !std::io::stderr().is_terminal() {
        return Arc::new(NotesOnly);
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let overall = multi.add(ProgressBar::new(total));
    overall.set_style(
        ProgressStyle::with_template(
            "{prefix:>11} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    overall.set_prefix("total");
    Arc::new(Bars {
        multi,
        overall,
        bars: Mutex::new(Vec::new()),
        grow: total == 0,
    })
}

impl Reporter for Bars {
    fn layer_started(&self, index: usize, total: usize, digest: &Digest, size: u64) {
        if self.grow {
            self.overall.inc_length(size);
        }
        let bar = self.multi.add(ProgressBar::new(size));
        let style = ProgressStyle::with_template(
            "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{:>11}", format!("layer {index}/{total}")));
        bar.set_message(digest.short());
        if let Ok(mut bars) = self.bars.lock() {
            if bars.len() < index {
                bars.resize(index, None);
            }
            bars[index - 1] = Some(bar);
        }
    }

    fn layer_progress(&self, index: usize, bytes: u64) {
        self.overall.inc(bytes);
        if let Ok(bars) = self.bars.lock() {
            if let Some(Some(b)) = bars.get(index - 1) {
                b.inc(bytes);
            }
        }
    }

    fn layer_finished(&self, index: usize) {
        if let Ok(bars) = self.bars.lock() {
            if let Some(Some(b)) = bars.get(index - 1) {
                b.finish_and_clear();
            }
            if bars
                .iter()
                .all(|b| b.as_ref().is_none_or(|b| b.is_finished()))
                && self.overall.position() >= self.overall.length().unwrap_or(0)
            {
                self.overall.finish_and_clear();
            }
        }
    }

    fn note(&self, message: &str) {
        self.multi.suspend(|| eprintln!("{message}"));
    }
}

/// A reporter without bars whose notes still reach stderr (for `--json`).
pub fn notes_only() -> Arc<dyn Reporter> {
    Arc::new(NotesOnly)
}

/// No bars, but notes still reach stderr.
struct NotesOnly;

impl Reporter for NotesOnly {
    fn note(&self, message: &str) {
        eprintln!("{message}");
    }
}
