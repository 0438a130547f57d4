//! The staged checks as a state machine: one stage runs at a time, each against its own
//! deadline, and the first failure ends the run. Time is passed in (`now`, since the run
//! started), so the machine is tested with a fake clock.

use std::time::Duration;

use serde::Serialize;

use crate::protocol::{AgentEvent, DONE, EventKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not reached: an earlier stage failed.
    NotRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    pub verdict: Verdict,
    /// Host wall time from the end of the previous stage to this one's verdict.
    pub duration_ms: Option<u64>,
    /// The harness's limit for this stage.
    pub timeout_s: u64,
    /// The agent's own clock at its verdict, when the agent gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_elapsed_ms: Option<u64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
    #[serde(skip)]
    started: Option<Duration>,
    #[serde(skip)]
    timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Tracker {
    stages: Vec<Stage>,
    current: usize,
    finished: bool,
    /// Set when every agent stage passed and only the agent's `done` line is awaited.
    done_wait_since: Option<Duration>,
    /// How many trailing stages the harness runs itself once the agent said `done` (`join`).
    host_stages: usize,
    /// The agent said `done` (pass) with host stages still to run.
    agent_done: bool,
}

/// How long the agent may take to say `done` after its last stage passed.
const DONE_TIMEOUT: Duration = Duration::from_secs(30);

impl Tracker {
    pub fn new(stages: impl IntoIterator<Item = (String, Duration)>) -> Self {
        let stages = stages
            .into_iter()
            .map(|(name, timeout)| Stage {
                name,
                verdict: Verdict::NotRun,
                duration_ms: None,
                timeout_s: timeout.as_secs(),
                agent_elapsed_ms: None,
                message: String::new(),
                detail: serde_json::Value::Null,
                started: None,
                timeout,
            })
            .collect();
        Self { stages, current: 0, finished: false, done_wait_since: None, host_stages: 0, agent_done: false }
    }

    /// Mark the last `n` stages as the harness's own: they run after the agent's `done`.
    pub fn with_host_stages(mut self, n: usize) -> Self {
        self.host_stages = n.min(self.stages.len());
        self
    }

    /// Where the agent's stages end and the harness's begin.
    fn agent_end(&self) -> usize {
        self.stages.len() - self.host_stages
    }

    /// A host stage is running: the agent passed everything and said `done`.
    pub fn host_stage_due(&self) -> bool {
        !self.finished && self.agent_done && self.current < self.stages.len()
    }

    /// Start (or, after a fallback to another accelerator, restart) from the first stage.
    pub fn start(&mut self, now: Duration) {
        let fresh = Self::new(self.stages.iter().map(|s| (s.name.clone(), s.timeout)));
        *self = fresh.with_host_stages(self.host_stages);
        if let Some(first) = self.stages.first_mut() {
            first.started = Some(now);
        }
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    pub fn passed(&self) -> bool {
        self.finished && self.stages.iter().all(|s| s.verdict == Verdict::Pass)
    }

    /// Every agent stage passed; only the agent's `done` is awaited.
    pub fn awaiting_done(&self) -> bool {
        !self.finished && !self.agent_done && self.current == self.agent_end()
    }

    pub fn current_name(&self) -> Option<&str> {
        (!self.finished).then(|| self.stages.get(self.current).map(|s| s.name.as_str())).flatten()
    }

    /// The stage that failed, if any.
    pub fn failed(&self) -> Option<&Stage> {
        self.stages.iter().find(|s| s.verdict == Verdict::Fail)
    }

    pub fn pass_current(&mut self, now: Duration, message: &str, detail: serde_json::Value, agent_ms: Option<u64>) {
        if self.finished {
            return;
        }
        self.close(now, Verdict::Pass, message, detail, agent_ms);
        self.current += 1;
        if let Some(next) = self.stages.get_mut(self.current) {
            next.started = Some(now);
        }
        if self.current == self.agent_end() && !self.agent_done {
            self.done_wait_since = Some(now);
        }
        if self.current == self.stages.len() && self.agent_done {
            // The last host stage passed; the agent had already said `done`.
            self.finished = true;
        }
    }

    /// Fail the running stage (a no-op once the run is decided): later stages stay not-run.
    pub fn fail_current(&mut self, now: Duration, message: &str, detail: serde_json::Value, agent_ms: Option<u64>) {
        if self.finished {
            return;
        }
        // Before the agent's `done`, a failure belongs to the agent's stages, never to a host
        // stage that has not begun.
        let agent_end = self.agent_end();
        let running = if self.agent_done { self.stages.len() } else { agent_end };
        if self.current < running {
            self.close(now, Verdict::Fail, message, detail, agent_ms);
        } else if let Some(last) = self.stages[..agent_end].last_mut() {
            // Everything passed but the run still went wrong (the agent reported `done: fail`).
            last.verdict = Verdict::Fail;
            last.message = message.to_owned();
        }
        self.finished = true;
    }

    fn close(&mut self, now: Duration, verdict: Verdict, message: &str, detail: serde_json::Value, ms: Option<u64>) {
        let s = &mut self.stages[self.current];
        s.verdict = verdict;
        s.duration_ms = s.started.map(|t| now.saturating_sub(t).as_millis() as u64);
        s.message = message.to_owned();
        s.detail = detail;
        s.agent_elapsed_ms = ms;
    }

    /// Fail the running stage if it is past its deadline.
    pub fn check_deadline(&mut self, now: Duration) {
        if let Some(since) = self.done_wait_since
            && !self.finished
            && now.saturating_sub(since) >= DONE_TIMEOUT
        {
            let msg =
                format!("the agent passed every stage but did not say `done` within {} s", DONE_TIMEOUT.as_secs());
            self.fail_current(now, &msg, serde_json::Value::Null, None);
            return;
        }
        if self.current >= self.agent_end() && !self.agent_done {
            return;
        }
        let Some(s) = self.stages.get(self.current).filter(|_| !self.finished) else { return };
        if let Some(started) = s.started
            && now.saturating_sub(started) >= s.timeout
        {
            let msg = format!("timed out after {} s", s.timeout.as_secs());
            self.fail_current(now, &msg, serde_json::Value::Null, None);
        }
    }

    /// Apply one agent event. The agent must report the stages in order; anything else is a
    /// protocol error that fails the run rather than being guessed around.
    pub fn on_agent_event(&mut self, ev: AgentEvent, now: Duration) {
        if self.finished {
            return;
        }
        let ms = Some(ev.elapsed_ms);
        // Host stages are not the agent's to report: past the agent's last, it is "none".
        let current = self.stages[..self.agent_end()].get(self.current).map(|s| s.name.clone());
        match (ev.stage.as_str(), ev.event, current) {
            (DONE, EventKind::Pass, None) if self.agent_done => {
                let msg = "the agent said `done` twice".to_owned();
                self.fail_current(now, &msg, serde_json::Value::Null, ms);
            }
            (DONE, EventKind::Pass, None) if self.current < self.stages.len() => {
                self.agent_done = true;
                self.done_wait_since = None;
                // A host stage's time starts when it can start: at the agent's `done`.
                self.stages[self.current].started = Some(now);
            }
            (DONE, EventKind::Pass, None) => self.finished = true,
            (DONE, EventKind::Pass, Some(current)) => {
                let msg = format!("the agent finished without reporting stage `{current}`");
                self.fail_current(now, &msg, serde_json::Value::Null, ms);
            }
            (DONE, _, _) => {
                let msg = if ev.message.is_empty() { "the agent reported failure".to_owned() } else { ev.message };
                self.fail_current(now, &msg, ev.detail, ms);
            }
            (stage, event, None) => {
                let msg = format!("the agent reported stage `{stage}` ({event:?}) after every stage passed");
                self.fail_current(now, &msg, ev.detail, ms);
            }
            (stage, event, Some(current)) if stage != current => {
                let msg = format!("the agent reported stage `{stage}` ({event:?}) while `{current}` was running");
                self.fail_current(now, &msg, ev.detail, ms);
            }
            (_, EventKind::Start, _) => {}
            (_, EventKind::Pass, _) => self.pass_current(now, &ev.message, ev.detail, ms),
            (_, EventKind::Fail, _) => self.fail_current(now, &ev.message, ev.detail, ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn tracker() -> Tracker {
        let mut t = Tracker::new(["kernel", "boot", "cri"].map(|n| (n.to_owned(), s(10))));
        t.start(s(0));
        t
    }

    fn ev(stage: &str, event: EventKind) -> AgentEvent {
        AgentEvent {
            stage: stage.into(),
            event,
            elapsed_ms: 7,
            message: "m".into(),
            detail: serde_json::json!({"k": 1}),
        }
    }

    #[test]
    fn passes_in_order_and_times_each_stage() {
        let mut t = tracker();
        t.pass_current(s(2), "", serde_json::Value::Null, None);
        t.on_agent_event(ev("boot", EventKind::Start), s(3));
        t.on_agent_event(ev("boot", EventKind::Pass), s(5));
        t.on_agent_event(ev("cri", EventKind::Pass), s(6));
        assert!(t.awaiting_done() && !t.finished());
        t.on_agent_event(ev("done", EventKind::Pass), s(6));
        assert!(t.passed());
        let d: Vec<_> = t.stages().iter().map(|s| s.duration_ms).collect();
        assert_eq!(d, [Some(2000), Some(3000), Some(1000)]);
        assert_eq!(t.stages()[2].detail["k"], 1);
    }

    #[test]
    fn first_failure_stops_and_later_stages_stay_not_run() {
        let mut t = tracker();
        t.pass_current(s(1), "", serde_json::Value::Null, None);
        t.on_agent_event(ev("boot", EventKind::Fail), s(4));
        assert!(t.finished() && !t.passed());
        assert_eq!(t.failed().unwrap().name, "boot");
        assert_eq!(t.stages()[2].verdict, Verdict::NotRun);
        t.on_agent_event(ev("cri", EventKind::Pass), s(5));
        assert_eq!(t.stages()[2].verdict, Verdict::NotRun, "nothing changes once decided");
    }

    #[test]
    fn deadlines_are_per_stage() {
        let mut t = tracker();
        t.check_deadline(s(9));
        assert!(!t.finished());
        t.pass_current(s(9), "", serde_json::Value::Null, None);
        t.check_deadline(s(18));
        assert!(!t.finished(), "boot started at 9 s");
        t.check_deadline(s(19));
        assert_eq!(t.failed().unwrap().name, "boot");
        assert_eq!(t.failed().unwrap().message, "timed out after 10 s");
    }

    #[test]
    fn a_host_stage_runs_after_the_agents_done() {
        let mut t = Tracker::new(["kernel", "boot", "join"].map(|n| (n.to_owned(), s(10)))).with_host_stages(1);
        t.start(s(0));
        t.pass_current(s(1), "", serde_json::Value::Null, None);
        t.on_agent_event(ev("boot", EventKind::Pass), s(2));
        assert!(t.awaiting_done() && !t.host_stage_due());
        t.check_deadline(s(20));
        assert!(!t.finished(), "the join limit does not run while the agent owes `done`");
        t.on_agent_event(ev("done", EventKind::Pass), s(25));
        assert!(t.host_stage_due() && t.current_name() == Some("join") && !t.finished());
        t.pass_current(s(28), "Ready", serde_json::Value::Null, None);
        assert!(t.passed());
        assert_eq!(t.stages()[2].duration_ms, Some(3000), "timed from `done`");

        // Waiting too long for `done` is the agent's failure, not the join's.
        let mut t = Tracker::new(["boot", "join"].map(|n| (n.to_owned(), s(100)))).with_host_stages(1);
        t.start(s(0));
        t.on_agent_event(ev("boot", EventKind::Pass), s(1));
        t.check_deadline(s(40));
        assert_eq!(t.failed().unwrap().name, "boot");
        assert_eq!(t.stages()[1].verdict, Verdict::NotRun);

        // A failed host stage fails the run; a restart keeps the split.
        let mut t = Tracker::new(["boot", "join"].map(|n| (n.to_owned(), s(100)))).with_host_stages(1);
        t.start(s(0));
        t.on_agent_event(ev("boot", EventKind::Pass), s(1));
        t.on_agent_event(ev("join", EventKind::Pass), s(2));
        assert_eq!(t.failed().unwrap().name, "boot", "the agent may not report a host stage");
        t.start(s(5));
        t.on_agent_event(ev("boot", EventKind::Pass), s(6));
        t.on_agent_event(ev("done", EventKind::Pass), s(7));
        t.fail_current(s(9), "NotReady", serde_json::Value::Null, None);
        assert_eq!(t.failed().unwrap().name, "join");
        assert!(t.finished() && !t.passed());
    }

    #[test]
    fn out_of_order_and_early_done_are_failures() {
        let mut t = tracker();
        t.pass_current(s(1), "", serde_json::Value::Null, None);
        t.on_agent_event(ev("cri", EventKind::Pass), s(2));
        assert!(t.failed().unwrap().message.contains("`cri`"));
        let mut t = tracker();
        t.pass_current(s(1), "", serde_json::Value::Null, None);
        t.on_agent_event(ev("done", EventKind::Pass), s(2));
        assert!(t.failed().unwrap().message.contains("without reporting stage `boot`"));
    }
}
