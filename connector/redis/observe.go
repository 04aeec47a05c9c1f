package redis

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// batcher runs the read-only queries of concurrent verifications on one
// node together, one pipeline per batch (group commit). CLIENT LIST costs
// the server time and bandwidth in proportion to every client it has, and
// every query costs a round trip; when many grants end together (a mass
// expiry) their verifications share both instead of each paying alone.
//
// Freshness is what makes sharing sound: a request only joins a batch that
// has not started yet, so what it gets was read after it was asked for,
// hence after the revocation it checks.
type batcher[Req, Resp any] struct {
	timeout time.Duration
	// run answers every request of a batch, one response per request.
	run func(ctx context.Context, reqs []Req) []Resp

	mu   sync.Mutex
	next *batch[Req, Resp] // not started; accepting requests
	busy bool              // a batch is running
}

type batch[Req, Resp any] struct {
	reqs  []Req
	resps []Resp
	done  chan struct{}
}

// do returns a fresh answer to req. The caller whose arrival finds the
// node idle runs the batch itself, so a lone verification costs one round
// trip and no goroutine.
func (b *batcher[Req, Resp]) do(ctx context.Context, req Req) (Resp, error) {
	b.mu.Lock()
	if b.next == nil {
		b.next = &batch[Req, Resp]{done: make(chan struct{})}
	}
	bt := b.next
	i := len(bt.reqs)
	bt.reqs = append(bt.reqs, req)
	lead := !b.busy
	if lead {
		b.busy = true
		b.next = nil
	}
	b.mu.Unlock()

	if lead {
		b.exec(bt)
		b.handOff()
	} else {
		select {
		case <-bt.done:
		case <-ctx.Done():
			var zero Resp
			return zero, ctx.Err()
		}
	}
	return bt.resps[i], nil
}

// handOff passes the node to a goroutine that runs the batches that
// gathered meanwhile, or marks it idle.
func (b *batcher[Req, Resp]) handOff() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.next == nil {
		b.busy = false
		return
	}
	go b.drain()
}

func (b *batcher[Req, Resp]) drain() {
	for {
		b.mu.Lock()
		bt := b.next
		b.next = nil
		if bt == nil {
			b.busy = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.exec(bt)
	}
}

// exec runs one batch. It does not use any caller's context: a caller that
// gives up must not fail the others sharing the batch.
func (b *batcher[Req, Resp]) exec(bt *batch[Req, Resp]) {
	defer close(bt.done)
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	bt.resps = b.run(ctx, bt.reqs)
}

// observation is what one look at a node saw for one user.
type observation struct {
	present bool
	reply   []any // ACL GETUSER, when present
	// clientsSeen counts every client CLIENT LIST showed; clients are
	// those authenticated as the user.
	clientsSeen int
	clients     []client
	err         error
	batch       int // how many verifications shared the CLIENT LIST
}

// observe reads ACL GETUSER for each user and one CLIENT LIST, in one
// pipeline on an admin connection.
func (n *node) observe(ctx context.Context, users []string) []observation {
	out := make([]observation, len(users))
	pipe := n.admin.Pipeline()
	gets := make([]*goredis.Cmd, len(users))
	for i, u := range users {
		gets[i] = pipe.Do(ctx, "ACL", "GETUSER", u)
	}
	list := pipe.Do(ctx, "CLIENT", "LIST")
	_, _ = pipe.Exec(ctx) // errors are read per command below
	text, err := list.Text()
	if err != nil {
		for i := range out {
			out[i].err = nodeError(n, "client list", err)
		}
		return out
	}
	wanted := make(map[string]bool, len(users))
	for _, u := range users {
		wanted[u] = true
	}
	total, byUser := parseClientList(text, wanted)
	for i, g := range gets {
		r := observation{clientsSeen: total, clients: byUser[users[i]], batch: len(users)}
		reply, err := g.Slice()
		switch {
		case err == nil:
			r.present, r.reply = true, reply
		case errors.Is(err, goredis.Nil):
		default:
			r.err = nodeError(n, "get user "+users[i], err)
		}
		out[i] = r
	}
	return out
}

// login is one probe request: a user and the grant's password.
type login struct{ user, password string }

// probeResult is the outcome of one login probe.
type probeResult struct {
	accepted bool
	outcome  string
	err      error
}

// probeLogins tries AUTH for each login, pipelined on one connection that
// is used for nothing else, then RESET, so the connection goes back to
// the pool anonymous even if a login was (wrongly) accepted. A failed AUTH
// leaves the connection as it was, so the attempts do not affect each
// other. WRONGPASS is the only outcome that proves a login gone; any other
// error means the probe could not run.
func (n *node) probeLogins(ctx context.Context, logins []login) []probeResult {
	out := make([]probeResult, len(logins))
	probe := n.probe.Load()
	cn := probe.Conn()
	defer cn.Close()
	pipe := cn.Pipeline()
	auths := make([]*goredis.Cmd, len(logins))
	for i, l := range logins {
		auths[i] = pipe.Do(ctx, "AUTH", l.user, l.password)
	}
	reset := pipe.Do(ctx, "RESET")
	_, _ = pipe.Exec(ctx) // errors are read per command below
	for i, a := range auths {
		err := a.Err()
		switch {
		case err == nil:
			out[i] = probeResult{accepted: true, outcome: "accepted: AUTH succeeded"}
		case goredis.HasErrorPrefix(err, "WRONGPASS"):
			out[i] = probeResult{outcome: "rejected: WRONGPASS"}
		default:
			out[i] = probeResult{err: nodeError(n, "login probe for "+logins[i].user, err)}
		}
	}
	if reset.Err() != nil {
		// The connection may still be logged in as a grant's user: drop
		// the whole probe pool rather than reuse it.
		n.replaceProbe(probe)
	}
	return out
}

// client is one CLIENT LIST entry.
type client struct{ id, addr, cmd string }

// parseClientList parses CLIENT LIST and returns the number of clients
// and the clients of the wanted users. Fields are space-separated
// key=value pairs and no field value can contain a space (client and
// library names cannot), so the first " user=" in a line is the user field
// and a client cannot forge it. Lines of other users are only scanned for
// that field: a large server lists thousands of clients.
func parseClientList(list string, wanted map[string]bool) (total int, byUser map[string][]client) {
	byUser = map[string][]client{}
	for line := range strings.Lines(list) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		total++
		user := field(line, "user")
		if !wanted[user] {
			continue
		}
		byUser[user] = append(byUser[user], client{id: field(line, "id"), addr: field(line, "addr"), cmd: field(line, "cmd")})
	}
	return total, byUser
}

// field returns the value of key in a CLIENT LIST line.
func field(line, key string) string {
	var rest string
	if strings.HasPrefix(line, key+"=") {
		rest = line[len(key)+1:]
	} else if i := strings.Index(line, " "+key+"="); i >= 0 {
		rest = line[i+len(key)+2:]
	} else {
		return ""
	}
	if j := strings.IndexByte(rest, ' '); j >= 0 {
		rest = rest[:j]
	}
	return rest
}
