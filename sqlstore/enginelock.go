package sqlstore

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"

	"github.com/lapsehq/lapse"
)

// LockEngine implements lapse.EngineLocker. On PostgreSQL, whose replicas
// share work by leases alone, it does nothing and returns a nil unlock.
//
// On SQLite an engine holds a lock on a file beside the database (the database's
// name with "-engine.lock" added) for as long as it runs: shared, so that
// several may run, but first, for a moment, exclusive. The exclusive lock is
// granted only when no engine holds the file, and then every lease in the
// database was left by a process that has ended — the kernel drops a
// process's locks when it dies, SIGKILL included — so they are freed at once
// instead of when each one ends. The exclusive lock is then turned into a
// shared one; the kernel may release it for an instant in between, and an
// engine that starts in that instant frees nothing of ours, because this one
// has claimed nothing yet.
func (s *Store) LockEngine(ctx context.Context, now time.Time) (int, func(), error) {
	if s.driver != DriverSQLite {
		return 0, nil, nil
	}
	if s.closed.Load() {
		return 0, nil, errClosed()
	}
	f, err := os.OpenFile(s.file+"-engine.lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return 0, nil, lapse.Internal("sqlite: open the engine lock", err)
	}
	unlock := func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}
	freed := 0
	var freeErr error
	switch err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); {
	case err == nil:
		var e enc
		t := e.time("now", now)
		if e.err != nil {
			unlock()
			return 0, nil, e.err
		}
		freeErr = s.Update(ctx, func(ltx lapse.Tx) error {
			res, err := ltx.(*tx).exec(ctx, qFreeLeases, t, t)
			if err != nil {
				return ltx.(*tx).fail("free leases", err)
			}
			n, err := res.RowsAffected()
			freed = int(n)
			return err
		})
		if freeErr != nil {
			// Nothing was freed; the leases end as usual. The engine
			// still holds the lock below, so that no later engine takes
			// this one's leases for a dead process's.
			freed = 0
		}
	case !errors.Is(err, syscall.EWOULDBLOCK):
		f.Close()
		return 0, nil, lapse.Internal("sqlite: take the engine lock", err)
	}
	// Shared from here on. Another engine may hold the lock exclusively for
	// the moment its own start takes: wait for it, as long as ctx allows.
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
		if err == nil {
			return freed, unlock, freeErr
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			unlock()
			return 0, nil, lapse.Internal("sqlite: take the engine lock", err)
		}
		select {
		case <-ctx.Done():
			unlock()
			return 0, nil, lapse.Errorf(lapse.EUNAVAILABLE, "sqlite: the engine lock is held exclusively by another process")
		case <-time.After(10 * time.Millisecond):
		}
	}
}
