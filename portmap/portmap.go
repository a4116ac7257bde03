// Package portmap asks the NAT in front of a host for a mapping of one UDP
// port with PCP, NAT-PMP or UPnP-IGD, keeps it renewed and deletes it on
// Close.
//
// The protocols are tried in this order:
//
//   - PCP (RFC 6887) first: one UDP round trip to the known gateway, and
//     the only one of the three with a PEER request, which makes the NAT
//     send the host's packets to a given peer (the Teredo server) from the
//     mapped port. On a symmetric NAT that is what makes the server, and
//     so the Teredo address, carry the mapped port.
//   - NAT-PMP (RFC 6886) next: the same port and wire family, one round
//     trip; a NAT-PMP-only gateway answers the PCP request with a version
//     0 UNSUPP_VERSION, so falling back costs one more round trip.
//   - UPnP-IGD last: SSDP discovery, an HTTP fetch of the device
//     description and a SOAP call, the slowest and largest exchange. SSDP
//     search is sent by unicast to the gateway (UPnP Device Architecture
//     1.1 allows it), never to the multicast group.
package portmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/teredo-go/teredo/clock"
)

// Protocol names a port mapping protocol.
type Protocol string

// The supported protocols, in their default order.
const (
	PCP    Protocol = "pcp"
	NATPMP Protocol = "nat-pmp"
	UPnP   Protocol = "upnp"
)

// DefaultProtocols is the order tried when Config.Protocols is empty.
var DefaultProtocols = []Protocol{PCP, NATPMP, UPnP}

// Defaults.
const (
	DefaultLifetime = time.Hour
	DefaultTimeout  = 2 * time.Second
	// minRetry bounds how often a failed renewal or discovery is retried.
	minRetry = 4 * time.Second
	// DefaultRetry is how long after every protocol failed they are tried
	// again.
	DefaultRetry = 5 * time.Minute
	maxPeers     = 4
)

// ErrNoMapping is returned when no protocol obtained a mapping.
var ErrNoMapping = errors.New("portmap: no port mapping")

// ErrClosed is returned by a Mapper after Close.
var ErrClosed = errors.New("portmap: mapper closed")

// Config configures a Mapper. Zero values get the defaults.
type Config struct {
	// InternalPort is the host's UDP port to map. Required.
	InternalPort uint16
	// Peers are remote endpoints (at most 4) whose traffic from the host
	// must leave the NAT from the mapped port: the Teredo servers. Only PCP
	// can ask for it (PEER opcode); with the other protocols the NAT keeps
	// its own outbound behaviour.
	Peers []netip.AddrPort
	// Protocols to try, in order; DefaultProtocols if empty.
	Protocols []Protocol
	// Lifetime requested for the mapping; DefaultLifetime if zero. The
	// mapping is renewed when half of the granted lifetime has passed.
	Lifetime time.Duration
	// Timeout bounds one protocol's attempt; DefaultTimeout if zero.
	Timeout time.Duration
	// Retry is the wait before trying again after every protocol failed;
	// DefaultRetry if zero.
	Retry time.Duration
	// Gateway returns the default gateway's IPv4 address;
	// DefaultGateway if nil.
	Gateway func() (netip.Addr, error)
	// Dial opens the UDP sockets to the gateway (PCP, SSDP); a
	// net.Dialer if nil. NAT-PMP goes through go-nat-pmp, which opens its
	// own socket to the gateway's port 5351.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// HTTPClient fetches the UPnP device description and makes the SOAP
	// calls; a client with Timeout if nil.
	HTTPClient *http.Client
	// PCPPort and SSDPPort are the gateway's ports (5351 and 1900 if zero);
	// tests point them at loopback responders.
	PCPPort, SSDPPort uint16
	// OnChange is called, outside the Mapper's lock, when the mapping is
	// obtained, changes its external endpoint, or is lost (zero Mapping).
	OnChange func(Mapping)
	Clock    clock.Clock
	Logger   *slog.Logger
}

// Mapping is a granted port mapping.
type Mapping struct {
	Protocol Protocol
	Gateway  netip.Addr
	// Internal is the host's address and port as the NAT sees them.
	Internal netip.AddrPort
	// External is the public address and port the NAT forwards to Internal.
	External netip.AddrPort
	// Lifetime is what the NAT granted at the last renewal.
	Lifetime time.Duration
	// Peers lists the PCP PEER mappings the NAT granted, by remote peer.
	Peers []netip.AddrPort
}

// Attempt is the outcome of one protocol's last try.
type Attempt struct {
	Protocol Protocol
	Err      string // empty on success
}

// Status is a snapshot of a Mapper.
type Status struct {
	Mapping  Mapping // zero while there is none
	Expires  time.Time
	Renewals uint64
	// LastError is the last failure (of any protocol), kept after success.
	LastError string
	Attempts  []Attempt
}

// mapper is one protocol's client. add creates or renews the mapping;
// remove deletes it. Both are called with the Mapper's op lock held, never
// concurrently.
type mapper interface {
	protocol() Protocol
	add(ctx context.Context, lifetime time.Duration) (Mapping, error)
	remove(ctx context.Context) error
}

// Mapper obtains and keeps one port mapping. Its methods are safe for
// concurrent use.
type Mapper struct {
	cfg Config
	log *slog.Logger
	clk clock.Clock

	op sync.Mutex // serializes protocol exchanges

	mu     sync.Mutex
	cur    mapper
	st     Status
	timer  clock.Timer
	closed bool
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

// New checks cfg and returns a Mapper; Start obtains the mapping.
func New(cfg Config) (*Mapper, error) {
	if cfg.InternalPort == 0 {
		return nil, errors.New("portmap: no internal port")
	}
	if len(cfg.Peers) > maxPeers {
		return nil, fmt.Errorf("portmap: %d peers, at most %d", len(cfg.Peers), maxPeers)
	}
	if len(cfg.Protocols) == 0 {
		cfg.Protocols = DefaultProtocols
	}
	for _, p := range cfg.Protocols {
		if p != PCP && p != NATPMP && p != UPnP {
			return nil, fmt.Errorf("portmap: unknown protocol %q", p)
		}
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.Lifetime < 2*minRetry {
		cfg.Lifetime = 2 * minRetry
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.Gateway == nil {
		cfg.Gateway = DefaultGateway
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: cfg.Timeout}
	}
	if cfg.PCPPort == 0 {
		cfg.PCPPort = pcpPort
	}
	if cfg.SSDPPort == 0 {
		cfg.SSDPPort = ssdpPort
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Mapper{cfg: cfg, log: cfg.Logger, clk: cfg.Clock, ctx: ctx, cancel: cancel}, nil
}

// Start tries the protocols in order until one grants a mapping, and keeps
// it renewed. If none does it returns an error wrapping ErrNoMapping and
// tries again every Config.Retry until Close.
func (m *Mapper) Start(ctx context.Context) (Mapping, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return Mapping{}, ErrClosed
	}
	m.mu.Unlock()
	mp, err := m.discover(ctx)
	m.schedule()
	return mp, err
}

// discover tries every protocol in order.
func (m *Mapper) discover(ctx context.Context) (Mapping, error) {
	m.op.Lock()
	defer m.op.Unlock()
	gw, err := m.cfg.Gateway()
	if err != nil {
		err = fmt.Errorf("%w: gateway: %w", ErrNoMapping, err)
		m.setAttempts(nil, err)
		return Mapping{}, err
	}
	var errs []error
	var attempts []Attempt
	for _, p := range m.cfg.Protocols {
		mc := m.newMapper(p, gw)
		actx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		mp, err := mc.add(actx, m.cfg.Lifetime)
		cancel()
		if err != nil {
			m.log.Debug("portmap: attempt failed", "protocol", p, "gateway", gw, "err", err)
			attempts = append(attempts, Attempt{Protocol: p, Err: err.Error()})
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			continue
		}
		attempts = append(attempts, Attempt{Protocol: p})
		m.log.Info("portmap: mapped", "protocol", p, "internal", mp.Internal, "external", mp.External,
			"lifetime", mp.Lifetime, "peers", mp.Peers)
		m.mu.Lock()
		m.cur = mc
		m.st.Mapping = mp
		m.st.Expires = m.clk.Now().Add(mp.Lifetime)
		m.st.Attempts = attempts
		if len(errs) > 0 {
			m.st.LastError = errors.Join(errs...).Error()
		}
		m.mu.Unlock()
		m.notify(mp)
		return mp, nil
	}
	err = fmt.Errorf("%w: %w", ErrNoMapping, errors.Join(errs...))
	m.setAttempts(attempts, err)
	return Mapping{}, err
}

func (m *Mapper) setAttempts(a []Attempt, err error) {
	m.mu.Lock()
	m.st.Attempts = a
	m.st.LastError = err.Error()
	m.mu.Unlock()
}

func (m *Mapper) newMapper(p Protocol, gw netip.Addr) mapper {
	switch p {
	case PCP:
		return newPCP(m, gw)
	case NATPMP:
		return newNATPMP(m, gw)
	default:
		return newUPnP(m, gw)
	}
}

func (m *Mapper) notify(mp Mapping) {
	if m.cfg.OnChange != nil {
		m.cfg.OnChange(mp)
	}
}

// schedule arms the timer for the next renewal or retry.
func (m *Mapper) schedule() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	var d time.Duration
	now := m.clk.Now()
	switch {
	case m.cur == nil:
		d = m.cfg.Retry
	default:
		// Renew at half the lifetime left (RFC 6886 §3.3 and RFC 6887
		// §11.2.1 both suggest renewing well before expiry); after a
		// failed renewal this halves the wait each time.
		d = max(m.st.Expires.Sub(now)/2, minRetry)
	}
	if m.timer == nil {
		m.timer = m.clk.AfterFunc(d, m.tick)
	} else {
		m.timer.Reset(d)
	}
}

// tick renews the mapping, or retries discovery.
func (m *Mapper) tick() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.wg.Add(1)
	cur := m.cur
	ctx := m.ctx
	m.mu.Unlock()
	defer m.wg.Done()
	if cur == nil {
		m.discover(ctx) //nolint:errcheck // recorded in Status
		m.schedule()
		return
	}
	m.renew(ctx, cur)
	m.schedule()
}

func (m *Mapper) renew(ctx context.Context, cur mapper) {
	m.op.Lock()
	actx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	mp, err := cur.add(actx, m.cfg.Lifetime)
	cancel()
	m.op.Unlock()
	now := m.clk.Now()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	if err != nil {
		m.st.LastError = fmt.Sprintf("renew %s: %v", cur.protocol(), err)
		lost := !now.Before(m.st.Expires)
		if lost {
			m.cur = nil
			m.st.Mapping = Mapping{}
		}
		m.mu.Unlock()
		m.log.Warn("portmap: renewal failed", "protocol", cur.protocol(), "lost", lost, "err", err)
		if lost {
			m.notify(Mapping{})
			m.discover(ctx) //nolint:errcheck // recorded in Status
		}
		return
	}
	old := m.st.Mapping
	m.st.Mapping = mp
	m.st.Expires = now.Add(mp.Lifetime)
	m.st.Renewals++
	m.mu.Unlock()
	if old.External != mp.External {
		m.log.Warn("portmap: mapping changed", "old", old.External, "new", mp.External)
		m.notify(mp)
	}
}

// Status returns a snapshot.
func (m *Mapper) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.st
	st.Attempts = append([]Attempt(nil), st.Attempts...)
	st.Mapping.Peers = append([]netip.AddrPort(nil), st.Mapping.Peers...)
	return st
}

// Mapping returns the current mapping and whether there is one.
func (m *Mapper) Mapping() (Mapping, bool) {
	st := m.Status()
	return st.Mapping, st.Mapping.External.IsValid()
}

// Close stops renewals and deletes the mapping (bounded by Config.Timeout).
func (m *Mapper) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	if m.timer != nil {
		m.timer.Stop()
	}
	cur := m.cur
	m.cur = nil
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	if cur == nil {
		return nil
	}
	m.op.Lock()
	defer m.op.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.Timeout)
	defer cancel()
	if err := cur.remove(ctx); err != nil {
		return fmt.Errorf("portmap: delete %s mapping: %w", cur.protocol(), err)
	}
	m.log.Info("portmap: mapping deleted", "protocol", cur.protocol())
	return nil
}

// ctxDeadline is the deadline of ctx, or now+d if it has none.
func ctxDeadline(ctx context.Context, d time.Duration) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return time.Now().Add(d)
}
