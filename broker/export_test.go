package broker

import "time"

// SetPause replaces the wait that paces an overdue backlog, so a test can
// read the delays instead of sleeping them.
func SetPause(b *Broker, pause func(time.Duration)) { b.pause = pause }

// Backoff is the retry wait before attempt n.
var Backoff = backoff
