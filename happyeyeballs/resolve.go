package happyeyeballs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/teredo-go/teredo/clock"
)

// DefaultResolutionDelay is how long addresses of the less preferred
// family wait for the preferred family's answer before they may be used
// (RFC 8305 §3 recommends 50 ms).
const DefaultResolutionDelay = 50 * time.Millisecond

// familyAnswer is what one of a name's two lookups returned.
type familyAnswer struct {
	v6    bool // the AAAA lookup; else the A lookup
	addrs []netip.Addr
	err   error
}

// resolution is one destination's AAAA and A lookups, sent at once (RFC
// 8305 §3), and the queue of usable addresses they produced. It hands out
// nothing until the preferred family has answered, or the other family has
// and the resolution delay has passed; then it hands out addresses
// alternating between families, preferred first (RFC 8305 §4). Addresses
// arriving later join the queue. Only the goroutine that created it may use
// it.
type resolution struct {
	host   string
	pref6  bool // IPv6 is the preferred family
	direct bool // IPv4 addresses are usable
	clock  clock.Clock
	delay  time.Duration

	answers  chan familyAnswer // one per lookup, buffered so lookups never block
	waiting  int               // lookups not answered yet
	prefDone bool              // the preferred family's lookup answered
	ready    bool              // addresses may be handed out
	v4, v6   []netip.Addr      // not handed out yet
	given    int               // addresses handed out
	last6    bool              // family of the last address handed out
	refused4 bool              // IPv4 addresses were dropped for want of Dial4
	errs     [2]error          // lookup errors: preferred family's, other's
	timer    clock.Timer       // the resolution delay
	delayed  chan struct{}     // closed when the resolution delay ends; nil when none runs
}

// resolve starts resolving host under the Dial4 and PreferIPv6 policies. An
// IP literal is its own answer. Without Dial4 the A lookup still runs,
// so that a name with only IPv4 addresses is refused as such rather than
// reported missing. The lookups end with ctx.
func (r *Dialer) resolve(ctx context.Context, host string) (*resolution, error) {
	delay := r.ResolutionDelay
	if delay <= 0 {
		delay = DefaultResolutionDelay
	}
	direct := r.Dial4 != nil
	res := &resolution{host: host, pref6: r.PreferIPv6 || !direct, direct: direct, clock: r.clock(), delay: delay}
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if ip.Is4() && !direct {
			return nil, refused("IPv4 destination %s", ip)
		}
		res.add(ip)
		res.ready = true
		return res, nil
	}
	res.answers = make(chan familyAnswer, 2)
	res.waiting = 2
	for _, v6 := range []bool{true, false} {
		network := "ip4"
		if v6 {
			network = "ip6"
		}
		go func() {
			found, err := r.lookup(ctx, network, host)
			res.answers <- familyAnswer{v6: v6, addrs: found, err: err}
		}()
	}
	return res, nil
}

// add queues a if the policy allows it. Addresses are classified by what
// they are once unmapped, not by the lookup that returned them.
func (res *resolution) add(a netip.Addr) {
	a = a.Unmap()
	switch {
	case !a.IsValid() || a.Zone() != "" || a.IsUnspecified():
	case a.Is4() && !res.direct:
		res.refused4 = true
	case a.Is4():
		if !slices.Contains(res.v4, a) {
			res.v4 = append(res.v4, a)
		}
	default:
		if !slices.Contains(res.v6, a) {
			res.v6 = append(res.v6, a)
		}
	}
}

func (res *resolution) queued() int { return len(res.v4) + len(res.v6) }

func (res *resolution) list(v6 bool) *[]netip.Addr {
	if v6 {
		return &res.v6
	}
	return &res.v4
}

// handle takes in one lookup's answer.
func (res *resolution) handle(ans familyAnswer) {
	res.waiting--
	pref := ans.v6 == res.pref6
	if ans.err != nil {
		i := 1
		if pref {
			i = 0
		}
		res.errs[i] = ans.err
	}
	for _, a := range ans.addrs {
		res.add(a)
	}
	if pref {
		res.prefDone = true
	}
	switch {
	case res.ready:
	case len(*res.list(res.pref6)) > 0 || (res.prefDone && res.queued() > 0):
		res.ready = true
		res.stop()
	case res.queued() > 0 && res.timer == nil:
		// Only the other family has answered: give the preferred one a
		// moment, as it usually follows at once.
		ch := make(chan struct{})
		res.delayed = ch // each timer closes its own channel
		res.timer = res.clock.AfterFunc(res.delay, func() { close(ch) })
	}
}

// delayEnded is called when the delayed channel closes.
func (res *resolution) delayEnded() {
	res.delayed = nil
	res.ready = true
}

// wake returns the channels on which the resolution's next events arrive;
// either may be nil.
func (res *resolution) wake() (<-chan familyAnswer, <-chan struct{}) {
	var answers <-chan familyAnswer
	if res.waiting > 0 {
		answers = res.answers
	}
	return answers, res.delayed
}

// next hands out the next address to try, if one may be used now.
func (res *resolution) next() (netip.Addr, bool) {
	if !res.ready || res.given >= maxAttempts {
		return netip.Addr{}, false
	}
	want6 := res.pref6
	if res.given > 0 {
		want6 = !res.last6
	}
	if len(*res.list(want6)) == 0 {
		want6 = !want6
	}
	l := res.list(want6)
	if len(*l) == 0 {
		return netip.Addr{}, false
	}
	a := (*l)[0]
	*l = (*l)[1:]
	res.given++
	res.last6 = want6
	return a, true
}

// more reports whether next may still hand out an address, now or later.
func (res *resolution) more() bool {
	return res.given < maxAttempts && (res.queued() > 0 || res.waiting > 0)
}

// stop ends the resolution delay, if it runs.
func (res *resolution) stop() {
	if res.timer != nil {
		res.timer.Stop()
		res.timer, res.delayed = nil, nil
	}
}

// err explains why a name gave nothing to try. ctxErr, the caller's
// context error if it gave up, wins while lookups or the resolution delay
// were still running: they were cut short.
func (res *resolution) err(ctxErr error) error {
	if ctxErr != nil && (res.waiting > 0 || res.queued() > 0) {
		return fmt.Errorf("resolve %s: %w", res.host, ctxErr)
	}
	// "No such host" for one family just means no records of that kind.
	var failed []error
	for i, err := range res.errs {
		var dnsErr *net.DNSError
		if err == nil || errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			continue
		}
		kind := "A"
		if (i == 0) == res.pref6 {
			kind = "AAAA"
		}
		failed = append(failed, fmt.Errorf("%s: %w", kind, err))
	}
	switch len(failed) {
	case 0:
		if res.refused4 {
			return refused("%s has only IPv4 addresses", res.host)
		}
		return &net.DNSError{Err: "no such host", Name: res.host, IsNotFound: true}
	case 1:
		return fmt.Errorf("resolve %s: %w", res.host, failed[0])
	default:
		return fmt.Errorf("resolve %s: %w; %w", res.host, failed[0], failed[1])
	}
}
