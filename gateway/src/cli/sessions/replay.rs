//! `sluice sessions replay ID`: the session as a timed transcript
//! ([`super::render::transcript_text`]) and, when it has a `.cast` file
//! ([`crate::recorder::cast`]), the terminal output played back between
//! the transcript's lines at the moments it was printed.
//!
//! Pace: real time by default, `--speed N` N times faster, `--no-wait` at
//! once (for scripts). The waits are a delay for the reader, not
//! synchronisation.
//!
//! Output is shown with control characters escaped (`\u{1b}` and so on,
//! `\r\n` read as a line end), like every text of a record, so a recording
//! cannot drive the reviewer's terminal; `--raw` writes it byte for byte as
//! recorded, as `asciinema play` would.
use std::{
    fs::File,
    io::{self, BufRead, BufReader, Write},
    path::Path,
    time::Duration,
};

use serde_json::Value;

use super::{
    clean, print_line, read_error, render::session_header, render::transcript_text, timestamp,
    CliError, Record,
};

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Real time divided by this factor (1: real time).
    Speed(f64),
    /// Everything at once.
    NoWait,
}

/// How terminal output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Control characters escaped.
    Escaped,
    /// As recorded.
    Raw,
}

/// One thing to show, at its offset from the session's start.
enum Moment<'a> {
    Record(&'a Value),
    /// Terminal output (`"o"`).
    Printed(String),
    /// A marker of Sluice's (`"m"`).
    Marker(String),
}

/// Prints the session's records and its recording's output, merged by time.
///
/// # Errors
/// [`CliError::Runtime`] when the `.cast` file exists but cannot be read or
/// is not asciicast v2; a closed stdout ends quietly.
pub async fn replay(
    records: &[Record],
    cast: &Path,
    pace: Pace,
    output: Output,
) -> Result<(), CliError> {
    print_line(&session_header(&records[0].value))?;
    let start = timestamp(&records[0].value);
    let mut moments: Vec<(Duration, Moment<'_>)> = Vec::new();
    let mut previous = Duration::ZERO;
    for r in records {
        let offset = match (start, timestamp(&r.value)) {
            (Some(s), Some(t)) => (t - s).to_std().unwrap_or(previous),
            _ => previous,
        };
        previous = offset;
        moments.push((offset, Moment::Record(&r.value)));
    }
    moments.extend(read_cast(cast)?);
    // Stable: at equal times a record comes before the output it caused.
    moments.sort_by_key(|(at, _)| *at);

    let mut clock = Duration::ZERO;
    let mut line_start = true;
    for (at, moment) in moments {
        if let Pace::Speed(speed) = pace {
            tokio::time::sleep(at.saturating_sub(clock).div_f64(speed)).await;
        }
        clock = clock.max(at);
        let line = match moment {
            Moment::Printed(text) => {
                let shown = match output {
                    Output::Raw => text,
                    Output::Escaped => escaped(&text),
                };
                line_start = shown.ends_with('\n');
                write_out(shown.as_bytes())?;
                continue;
            }
            Moment::Record(v) => transcript_text(v),
            Moment::Marker(label) => clean(&format!("{:<10} {label}", "marker")),
        };
        if !line_start {
            write_out(b"\n")?;
            line_start = true;
        }
        print_line(&format!("+{:>9.3}s  {line}", at.as_secs_f64()))?;
    }
    if !line_start {
        write_out(b"\n")?;
    }
    Ok(())
}

/// The output and marker events of the `.cast` file at `path`, if any.
fn read_cast(path: &Path) -> Result<Vec<(Duration, Moment<'static>)>, CliError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(path, e)),
    };
    let bad = |what: &str| {
        CliError::Runtime(format!(
            "{} is not an asciicast v2 recording: {what}",
            path.display()
        ))
    };
    let mut lines = BufReader::new(file).lines();
    let header: Value = match lines.next() {
        Some(line) => serde_json::from_str(&line.map_err(|e| read_error(path, e))?)
            .map_err(|_| bad("its header is not JSON"))?,
        None => return Ok(Vec::new()),
    };
    if header["version"] != 2 {
        return Err(bad("its header's version is not 2"));
    }
    let mut moments = Vec::new();
    for line in lines {
        let line = line.map_err(|e| read_error(path, e))?;
        let Ok(Value::Array(event)) = serde_json::from_str::<Value>(&line) else {
            // A write in progress (an open session's last line).
            continue;
        };
        let (Some(t), Some(code), Some(data)) = (
            event.first().and_then(Value::as_f64),
            event.get(1).and_then(Value::as_str),
            event.get(2).and_then(Value::as_str),
        ) else {
            return Err(bad("an event is not [time, code, data]"));
        };
        let at = Duration::try_from_secs_f64(t).map_err(|_| bad("an event's time is negative"))?;
        match code {
            "o" => moments.push((at, Moment::Printed(data.to_string()))),
            "m" => moments.push((at, Moment::Marker(data.to_string()))),
            _ => {}
        }
    }
    Ok(moments)
}

/// Terminal output with its control characters escaped but for line ends
/// and tabs; `\r\n` (a pty's line end) is a line end.
fn escaped(text: &str) -> String {
    clean_keeping(&text.replace("\r\n", "\n"), &['\n', '\t'])
}

fn clean_keeping(text: &str, keep: &[char]) -> String {
    text.split_inclusive(keep)
        .map(|part| match part.strip_suffix(keep) {
            Some(body) => format!("{}{}", clean(body), &part[body.len()..]),
            None => clean(part),
        })
        .collect()
}

/// Writes terminal output on stdout; a closed stdout ends quietly.
fn write_out(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(CliError::Exit(0)),
        Err(e) => Err(CliError::Runtime(format!("cannot write to stdout: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_line_ends_and_escapes_the_rest() {
        assert_eq!(escaped("a\r\nb\tc\u{1b}[2J\n"), "a\nb\tc\\u{1b}[2J\n");
        assert_eq!(escaped("no end"), "no end");
    }

    #[test]
    fn a_cast_file_is_read_as_output_and_markers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s-1.cast");
        std::fs::write(
            &path,
            "{\"version\": 2, \"width\": 80, \"height\": 24, \"timestamp\": 0}\n[0.5, \"o\", \"hi\\r\\n\"]\n[0.6, \"r\", \"100x40\"]\n[0.7, \"m\", \"cut\"]\n",
        )
        .unwrap();
        let moments = read_cast(&path).unwrap();
        assert_eq!(moments.len(), 2);
        assert_eq!(moments[0].0, Duration::from_millis(500));
        assert!(matches!(&moments[0].1, Moment::Printed(t) if t == "hi\r\n"));
        assert!(matches!(&moments[1].1, Moment::Marker(t) if t == "cut"));
        assert!(read_cast(&dir.path().join("none.cast")).unwrap().is_empty());
        std::fs::write(&path, "{\"version\": 1}\n").unwrap();
        assert!(read_cast(&path).is_err());
    }
}
