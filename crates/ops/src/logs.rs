//! Reading a try's log as it grows: every stored line in order, then the try's end once it
//! has ended and every line is out. The API's live log (Server-Sent Events), the UI's and
//! `stevedore tasks logs --follow` read it through [`follow`], its lines through a
//! [`LogReader`] (the store's rows, or an archived log read as if it were rows).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use stevedore_domain::state::TryState;
use stevedore_store::{LogLine, LogReader, Store, StoreError, TryRecord};

/// Lines read from the store at once (a page is also bounded in bytes by the store).
const PAGE: u32 = 1000;

/// What following a try's log yields.
#[derive(Clone, Debug, PartialEq)]
pub enum LogEvent {
    Line(LogLine),
    /// The try has ended (as recorded now) and every line of it was sent.
    End(TryRecord),
}

/// How to follow.
#[derive(Clone, Copy, Debug)]
pub struct FollowOptions {
    /// Lines after this `seq` only.
    pub after: Option<i64>,
    /// Keep going until the try ends (`false`: stop once the stored lines are out, with no
    /// `End`).
    pub live: bool,
    /// How long to wait before looking again when nothing new is stored.
    pub poll: Duration,
}

struct Following {
    store: Arc<dyn Store>,
    lines: Arc<dyn LogReader>,
    attempt: TryRecord,
    options: FollowOptions,
    pending: VecDeque<LogEvent>,
    done: bool,
}

/// The log of `attempt` as a stream (see the module doc). A store error ends it with that
/// error.
pub fn follow(
    store: Arc<dyn Store>,
    lines: Arc<dyn LogReader>,
    attempt: TryRecord,
    options: FollowOptions,
) -> impl Stream<Item = Result<LogEvent, StoreError>> {
    let start = Following {
        store,
        lines,
        attempt,
        options,
        pending: VecDeque::new(),
        done: false,
    };
    futures_util::stream::unfold(start, |mut following| async move {
        loop {
            if let Some(event) = following.pending.pop_front() {
                return Some((Ok(event), following));
            }
            if following.done {
                return None;
            }
            match following.next_page().await {
                Ok(()) => {}
                Err(error) => {
                    following.done = true;
                    return Some((Err(error), following));
                }
            }
        }
    })
}

impl Following {
    /// Reads the next page into `pending`, or waits when there is nothing yet.
    async fn next_page(&mut self) -> Result<(), StoreError> {
        // The try's state is read before its lines: lines stored before it ended are then
        // all read by this page or the next one.
        let current = self
            .store
            .tries(&self.attempt.run_id, &self.attempt.task_id)
            .await?
            .into_iter()
            .find(|t| t.try_id == self.attempt.try_id)
            .unwrap_or_else(|| self.attempt.clone());
        let page = self
            .lines
            .log_page(self.attempt.try_id, self.options.after, PAGE)
            .await?;
        let full = page.cut || page.lines.len() == PAGE as usize;
        if let Some(last) = page.lines.last() {
            self.options.after = Some(last.seq);
        }
        let empty = page.lines.is_empty();
        self.pending
            .extend(page.lines.into_iter().map(LogEvent::Line));
        if full {
            return Ok(());
        }
        if !self.options.live {
            self.done = true;
        } else if current.state != TryState::Running {
            self.pending.push_back(LogEvent::End(current));
            self.done = true;
        } else if empty {
            tokio::time::sleep(self.options.poll).await;
        }
        Ok(())
    }
}
