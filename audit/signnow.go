package audit

import (
	"context"

	"github.com/lapsehq/lapse"
)

// SignNow records that the caller in ctx asked for a checkpoint (an
// audit.checkpoint_requested event: a use of the signing key on demand),
// then integrates and signs at once, and returns the checkpoint, which
// covers that request too. Periodic rounds are not logged as events: each
// would need a checkpoint of its own, and the checkpoints are published to
// the sinks, which is their record.
//
// Returns EUNAVAILABLE if the request cannot be recorded, or the error of
// Sync (a sink's refusal comes with the checkpoint stored and signed).
func (l *Log) SignNow(ctx context.Context) (*Checkpoint, error) {
	ev := &lapse.Event{Time: l.clock.Now(), Type: lapse.EventCheckpointRequested, ActorID: "lapse",
		Channel: lapse.ChannelSystem, Outcome: "requested"}
	if p := lapse.FromContext(ctx); p != nil {
		ev.ActorID, ev.ActorKind, ev.Channel = p.ID, p.Kind, lapse.ChannelFrom(ctx)
	}
	if err := l.b.AppendEvent(ctx, ev); err != nil {
		return nil, &lapse.Error{Code: lapse.EUNAVAILABLE, Message: "the checkpoint request could not be recorded in the audit log", Err: err}
	}
	return l.Sync(ctx)
}
