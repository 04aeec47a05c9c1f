package lapse

import "time"

// Clock tells the time. Every component that reads the time takes a Clock so
// that tests advance a fake clock instead of sleeping.
type Clock interface {
	Now() time.Time
}

// SystemClock is the wall clock, in UTC.
type SystemClock struct{}

// Now returns the current UTC time.
func (SystemClock) Now() time.Time { return time.Now().UTC() }
