package notify

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/lapsehq/lapse"
)

// Transport limits. A webhook receiver is someone else's server: every step
// of a call is bounded so a slow or silent one only delays its own queue.
const (
	dialTimeout         = 5 * time.Second
	tlsHandshakeTimeout = 10 * time.Second
	maxResponseHeaders  = 64 << 10
	// maxResponseBody is how much of an answer is read (and thrown away)
	// so the connection can be reused; the rest is cut off.
	maxResponseBody = 64 << 10
)

// Address classes a webhook may not reach. Private ones are allowed by
// allow_private; the others are never a place a receiver can live.
var (
	// alwaysRefused: no host listens there (unspecified, broadcast,
	// "this network", reserved) or it is not unicast.
	alwaysRefused = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("240.0.0.0/4"), // reserved, and 255.255.255.255
	}
	// privateRanges complement netip's IsPrivate, IsLoopback and
	// IsLinkLocalUnicast with ranges that are just as internal.
	privateRanges = []netip.Prefix{
		netip.MustParsePrefix("100.64.0.0/10"), // carrier-grade NAT, shared address space
		netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
		netip.MustParsePrefix("198.18.0.0/15"), // benchmarking
		netip.MustParsePrefix("fec0::/10"),     // deprecated site-local
	}
	// Prefixes that embed an IPv4 address a gateway may forward to: the
	// embedded address is judged instead.
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour   = netip.MustParsePrefix("2002::/16")
)

// checkAddr reports why a webhook may not connect to ip, or nil. It is the
// one rule, applied to the address being dialled (after DNS), so neither a
// hostname that resolves to an internal address nor one whose answer changes
// between a check and the connection (DNS rebinding) gets around it.
func checkAddr(ip netip.Addr, allowPrivate bool) error {
	ip = ip.Unmap()
	refuse := func(class string, private bool) error {
		hint := ""
		if private {
			hint = " (set allow_private: true on the webhook to allow it)"
		}
		return &lapse.Error{Code: lapse.EFORBIDDEN, Reason: ReasonAddressRefused,
			Message: fmt.Sprintf("address %s is %s; webhooks may not connect to it%s", ip, class, hint)}
	}
	switch {
	case !ip.IsValid():
		return refuse("not an IP address", false)
	case ip.IsUnspecified():
		return refuse("unspecified", false)
	case ip.IsMulticast():
		return refuse("multicast", false)
	}
	for _, p := range alwaysRefused {
		if p.Contains(ip) {
			return refuse("reserved", false)
		}
	}
	if ip.Is6() && (nat64Prefix.Contains(ip) || sixToFour.Contains(ip)) {
		b := ip.As16()
		var v4 netip.Addr
		if nat64Prefix.Contains(ip) {
			v4 = netip.AddrFrom4([4]byte(b[12:16]))
		} else {
			v4 = netip.AddrFrom4([4]byte(b[2:6]))
		}
		if err := checkAddr(v4, allowPrivate); err != nil {
			var le *lapse.Error
			errors.As(err, &le)
			return &lapse.Error{Code: le.Code, Reason: le.Reason, Message: fmt.Sprintf("address %s embeds %s: %s", ip, v4, le.Message)}
		}
		return nil
	}
	if allowPrivate {
		return nil
	}
	switch {
	case ip.IsLoopback():
		return refuse("loopback", true)
	case ip.IsLinkLocalUnicast():
		return refuse("link-local", true)
	case ip.IsPrivate():
		return refuse("private", true)
	}
	for _, p := range privateRanges {
		if p.Contains(ip) {
			return refuse("private", true)
		}
	}
	return nil
}

// dialControl runs between the resolution of a name and the connect call,
// on the address actually dialled.
func dialControl(allowPrivate bool) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		if network != "tcp4" && network != "tcp6" {
			return &lapse.Error{Code: lapse.EFORBIDDEN, Reason: ReasonAddressRefused, Message: "webhooks connect over TCP only, not " + network}
		}
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return &lapse.Error{Code: lapse.EFORBIDDEN, Reason: ReasonAddressRefused, Message: "cannot parse the dialled address " + address}
		}
		return checkAddr(ap.Addr(), allowPrivate)
	}
}

// newClient returns the HTTP client of one webhook: no proxy (a proxy would
// be the address checked, not the receiver), no redirects (each hop would
// be a new, unchecked destination, and the signed body would follow it),
// bounded at every step.
func newClient(allowPrivate bool, timeout time.Duration, resolver *net.Resolver, roots *x509.CertPool) *http.Client {
	d := &net.Dialer{
		Timeout:   dialTimeout,
		KeepAlive: 30 * time.Second,
		Resolver:  resolver,
		Control:   dialControl(allowPrivate),
	}
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            d.DialContext,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
		TLSHandshakeTimeout:    tlsHandshakeTimeout,
		ResponseHeaderTimeout:  timeout,
		ExpectContinueTimeout:  time.Second,
		MaxIdleConns:           4,
		MaxIdleConnsPerHost:    2,
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: maxResponseHeaders,
		ForceAttemptHTTP2:      true,
	}
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// CheckURL checks a webhook URL before anything is sent: https (http only
// with allowPrivate, where receivers on an internal network often have no
// certificate), a host, no user information (credentials belong in the
// secret, not in a URL that travels through logs and proxies), and, when
// the host is an IP literal or a localhost name, an address the webhook may
// reach. The final word is the dial-time check on the resolved address.
// Messages never repeat the URL: its path may be a credential (a Slack
// incoming-webhook URL is one).
//
// Returns EINVALID with Field "url".
func CheckURL(raw string, allowPrivate bool) error {
	bad := func(format string, args ...any) error {
		return lapse.FieldErrorf(lapse.EINVALID, "url", format, args...)
	}
	if raw == "" {
		return bad("required: the receiver's https URL")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad("not a URL")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !allowPrivate {
			return bad("must be https (http only with allow_private: true, for receivers on an internal network)")
		}
	default:
		return bad("must be an https URL")
	}
	if u.Opaque != "" || u.Host == "" || u.Hostname() == "" {
		return bad("has no host")
	}
	if u.User != nil {
		return bad("must not carry user information; the webhook's secret signs every call")
	}
	if u.Fragment != "" {
		return bad("must not have a fragment")
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if ip, err := netip.ParseAddr(host); err == nil {
		if err := checkAddr(ip, allowPrivate); err != nil {
			return bad("%s", lapse.ErrorMessage(err))
		}
	} else if !allowPrivate && (host == "localhost" || strings.HasSuffix(host, ".localhost")) {
		return bad("%s is loopback; webhooks may not connect to it (set allow_private: true on the webhook to allow it)", host)
	}
	return nil
}
