package notify_test

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

// fakeDNS is a DNS server on the loopback interface that answers every A
// query with one address and every other query with no records, so a test
// can make any hostname resolve where it wants, through the real resolver
// and dialer, as a rebinding attacker's name server would.
type fakeDNS struct {
	addr string
}

func startFakeDNS(t *testing.T, answer netip.Addr) *fakeDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fake DNS: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := dnsAnswer(buf[:n], answer); resp != nil {
				_, _ = pc.WriteTo(resp, from)
			}
		}
	}()
	return &fakeDNS{addr: pc.LocalAddr().String()}
}

// resolver returns a resolver that asks only this server.
func (f *fakeDNS) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", f.addr)
	}}
}

// dnsAnswer builds the response to one query (RFC 1035 §4.1).
func dnsAnswer(q []byte, answer netip.Addr) []byte {
	if len(q) < 12 {
		return nil
	}
	end := 12
	for end < len(q) && q[end] != 0 {
		end += int(q[end]) + 1
	}
	end += 5 // the root label, QTYPE, QCLASS
	if end > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[end-4 : end-2])
	resp := make([]byte, 0, end+16)
	resp = append(resp, q[0], q[1]) // ID
	resp = append(resp, 0x81, 0x80) // response, recursion desired and available, no error
	resp = binary.BigEndian.AppendUint16(resp, 1)
	ancount := uint16(0)
	if qtype == 1 && answer.Is4() {
		ancount = 1
	}
	resp = binary.BigEndian.AppendUint16(resp, ancount)
	resp = append(resp, 0, 0, 0, 0) // NSCOUNT, ARCOUNT
	resp = append(resp, q[12:end]...)
	if ancount == 1 {
		a := answer.As4()
		resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4) // name → the question, A, IN, TTL 5s, 4 bytes
		resp = append(resp, a[:]...)
	}
	return resp
}
