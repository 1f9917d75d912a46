//! The local engine as a shard [`Backend`]: state in this process's memory.

use std::convert::Infallible;

use super::{Backend, Sizes};
use crate::engine::command::{Command, ConnRef};
use crate::engine::effects::Effects;
use crate::engine::state::ShardState;

impl Backend for ShardState {
    type Event = Infallible;

    fn execute(&mut self, cmds: &[Command], now_ms: u64, fx: &mut Effects) {
        for c in cmds {
            ShardState::execute(self, c, now_ms, fx);
        }
    }

    fn disconnect(&mut self, conn: ConnRef) {
        ShardState::disconnect(self, conn);
    }

    fn sweep(&mut self, now_ms: u64, fx: &mut Effects) {
        fx.unstamp();
        ShardState::sweep(self, now_ms, fx);
    }

    fn sizes(&self) -> Sizes {
        ShardState::sizes(self)
    }
}
