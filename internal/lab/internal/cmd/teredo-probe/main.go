// Command teredo-probe is the lab's driver for the project's client library: it
// qualifies a stack.Stack with a Teredo server from inside a lab namespace and then
// takes orders from the test over a small HTTP control API on loopback (status, an
// HTTP download through the tunnel, a TCP echo to a peer, an echo listener on the
// Teredo address), answering in JSON.
//
// It prints "teredo-probe: ready {json}" once qualified (address, mapping, server,
// local socket, control address) and one "teredo-probe: event {json}" line per client
// event; logs go to standard error. SIGTERM stops it.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/teredo-go/teredo/client"
	"github.com/teredo-go/teredo/dialer"
	tcp "github.com/teredo-go/teredo/internal/gvtcp"
	"github.com/teredo-go/teredo/internal/lab/internal/echo"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/stack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "teredo-probe:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("teredo-probe", flag.ContinueOnError)
	server := fs.String("server", "", "Teredo server primary IPv4 `address`")
	secondary := fs.String("secondary", "", "the server's secondary `address` (default primary+1)")
	bind := fs.String("bind", "0.0.0.0:0", "local UDP `address:port`")
	relay := fs.String("relay", "", "fixed relay `address:port` for native destinations (default: echo test)")
	coneProbe := fs.Bool("cone-probe", false, "add a cone RS to the NAT classification")
	bubbleTTL := fs.Int("bubble-ttl", 0, "IPv4 `TTL` of the first direct bubbles (0: the client's default, -1: the socket's)")
	localDiscovery := fs.Bool("local-discovery", false, "RFC 4380 local discovery (224.0.0.253:3544)")
	noHairpin := fs.Bool("no-hairpin", false, "no RFC 6081 Alternate Address trailer in bubbles")
	noPortPrediction := fs.Bool("no-port-prediction", false, "no RFC 6081 port prediction behind a sequential symmetric NAT")
	portMapping := fs.Bool("portmap", false, "map the UDP port on the NAT (PCP, NAT-PMP, UPnP-IGD) before qualifying")
	peerRelay := fs.Bool("peer-relay", false, "reach Teredo peers that bubbles cannot through a relay (stack.Config.PeerRelay, teredo-socks's default)")
	control := fs.String("control", "127.0.0.1:7900", "control API `address`")
	qualify := fs.Duration("qualify", 20*time.Second, "qualification timeout")
	recovery := fs.Int("tcp-recovery", -1, "gVisor TCPRecovery flags (0 turns RACK off; -1 keeps the stack's)")
	disableGSO := fs.Bool("disable-gso", false, "turn off gVisor's in-stack segmentation offload")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	cfg := stack.Config{Logger: log, ConeProbe: *coneProbe, DisableGSO: *disableGSO}
	cfg.BubbleTTL, cfg.LocalDiscovery, cfg.NoHairpinning = *bubbleTTL, *localDiscovery, *noHairpin
	cfg.PortMapping, cfg.PeerRelay, cfg.NoPortPrediction = *portMapping, *peerRelay, *noPortPrediction
	var err error
	srv, err := netip.ParseAddr(*server)
	if err != nil {
		return fmt.Errorf("-server: %w", err)
	}
	cfg.Servers = []netip.Addr{srv}
	if *secondary != "" {
		if cfg.Secondary, err = netip.ParseAddr(*secondary); err != nil {
			return fmt.Errorf("-secondary: %w", err)
		}
	}
	if cfg.LocalAddr, err = netip.ParseAddrPort(*bind); err != nil {
		return fmt.Errorf("-bind: %w", err)
	}
	if *relay != "" {
		if cfg.FixedRelay, err = netip.ParseAddrPort(*relay); err != nil {
			return fmt.Errorf("-relay: %w", err)
		}
	}
	ctl, err := net.Listen("tcp", *control)
	if err != nil {
		return err
	}
	defer ctl.Close()

	qctx, cancel := context.WithTimeout(ctx, *qualify)
	s, err := stack.New(qctx, cfg)
	cancel()
	if err != nil {
		return fmt.Errorf("qualify: %w", err)
	}
	defer s.Close()
	if *recovery >= 0 {
		opt := tcpip.TCPRecovery(*recovery)
		if err := s.Netstack().SetTransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
			return fmt.Errorf("-tcp-recovery: %s", err)
		}
	}
	var outMu sync.Mutex
	emit := func(kind string, v any) {
		b, _ := json.Marshal(v)
		outMu.Lock()
		fmt.Printf("teredo-probe: %s %s\n", kind, b)
		outMu.Unlock()
	}
	unsub := s.Subscribe(func(ev stack.Event) { emit("event", eventJSON(ev)) })
	defer unsub()

	p := &probe{s: s, d: dialer.New(s), log: log, echoes: map[uint16]*echo.Server{}}
	defer p.closeListeners()
	st := s.Status().Client
	emit("ready", map[string]any{
		"addr": s.Addr(), "mapped": st.Mapped, "server": st.Server,
		"local": s.LocalAddr(), "control": ctl.Addr().String(),
	})
	hs := &http.Server{Handler: p.mux(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	if err := hs.Serve(ctl); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func eventJSON(ev stack.Event) map[string]any {
	switch ev := ev.(type) {
	case client.Qualified:
		return map[string]any{"kind": "qualified", "addr": ev.Addr, "mapped": ev.Mapped, "server": ev.Server}
	case client.AddressChanged:
		return map[string]any{"kind": "address_changed", "old": ev.Old, "new": ev.New}
	case client.Offline:
		return map[string]any{"kind": "offline", "reason": fmt.Sprint(ev.Reason)}
	case client.NATClassified:
		return map[string]any{"kind": "nat", "type": ev.Type.String()}
	}
	return map[string]any{"kind": fmt.Sprintf("%T", ev)}
}

// probe serves the control API over one qualified stack.
type probe struct {
	s   *stack.Stack
	d   *dialer.Dialer
	log *slog.Logger

	mu     sync.Mutex
	echoes map[uint16]*echo.Server
}

func (p *probe) mux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("GET /status", p.status)
	m.HandleFunc("GET /get", p.get)
	m.HandleFunc("GET /echo", p.echo)
	m.HandleFunc("GET /listen", p.listen)
	return m
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		b, _ := json.Marshal(map[string]any{"error": err.Error(), "partial": v})
		w.Write(b)
		return
	}
	json.NewEncoder(w).Encode(v)
}

// timeout reads the request's "timeout" (a duration), defaulting to 30 s.
func timeout(r *http.Request) time.Duration {
	if d, err := time.ParseDuration(r.FormValue("timeout")); err == nil && d > 0 {
		return d
	}
	return 30 * time.Second
}

func (p *probe) status(w http.ResponseWriter, r *http.Request) {
	st := p.s.Status()
	c := st.Client
	p.mu.Lock()
	listeners := map[string]any{}
	for port, e := range p.echoes {
		listeners[strconv.Itoa(int(port))] = map[string]int64{"accepted": e.Accepted.Load(), "echoed": e.Echoed.Load()}
	}
	p.mu.Unlock()
	reply(w, map[string]any{
		"state": c.State.String(), "nat": c.NAT.String(), "nat_ports": c.NATPorts.String(), "addr": c.Addr, "server": c.Server,
		"mapped": c.Mapped, "mtu": c.MTU, "peers": c.Peers, "local": p.s.LocalAddr(),
		"counters": c.Counters, "link": st.Link, "listeners": listeners, "tcp": p.tcpStats(),
		"portmap": st.PortMap,
	}, nil)
}

// tcpStats are gVisor's TCP counters that tell how connections recovered from loss.
func (p *probe) tcpStats() map[string]uint64 {
	t := p.s.Netstack().Stats().TCP
	return map[string]uint64{
		"segments_sent": t.SegmentsSent.Value(), "segments_received": t.ValidSegmentsReceived.Value(),
		"retransmits": t.Retransmits.Value(), "timeouts": t.Timeouts.Value(),
		"fast_retransmit": t.FastRetransmit.Value(), "fast_recovery": t.FastRecovery.Value(),
		"sack_recovery": t.SACKRecovery.Value(), "tlp_recovery": t.TLPRecovery.Value(),
		"slow_start_retransmits": t.SlowStartRetransmits.Value(), "spurious_recovery": t.SpuriousRecovery.Value(),
		"spurious_rto_recovery": t.SpuriousRTORecovery.Value(), "dsack_acked": t.SegmentsAckedWithDSACK.Value(),
		"send_errors": t.SegmentSendErrors.Value(), "checksum_errors": t.ChecksumErrors.Value(),
		"invalid_segments": t.InvalidSegmentsReceived.Value(),
	}
}

// get downloads url through the tunnel and reports its size and SHA-256.
func (p *probe) get(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), timeout(r))
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DialContext: p.d.DialContext, DisableKeepAlives: true}}
	start := time.Now()
	res := map[string]any{}
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.FormValue("url"), nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		res["size"], res["sha256"] = n, hex.EncodeToString(h.Sum(nil))
		return err
	}()
	res["ms"] = time.Since(start).Milliseconds()
	reply(w, res, err)
}

// echo dials addr over TCP through the tunnel and runs echo.Check with size bytes.
func (p *probe) echo(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), timeout(r))
	defer cancel()
	size, err := strconv.ParseInt(r.FormValue("size"), 10, 64)
	if err != nil || size < 0 {
		reply(w, nil, fmt.Errorf("bad size %q", r.FormValue("size")))
		return
	}
	seed, _ := strconv.ParseUint(r.FormValue("seed"), 10, 64)
	start := time.Now()
	c, err := p.d.DialContext(ctx, "tcp6", r.FormValue("addr"))
	if err != nil {
		reply(w, map[string]any{"dial_ms": time.Since(start).Milliseconds()}, fmt.Errorf("dial: %w", err))
		return
	}
	res, err := echo.Check(ctx, c, size, seed)
	reply(w, res, err)
}

// listen starts a TCP echo listener on the Teredo address.
func (p *probe) listen(w http.ResponseWriter, r *http.Request) {
	port, err := strconv.ParseUint(r.FormValue("port"), 10, 16)
	if err != nil {
		reply(w, nil, fmt.Errorf("bad port %q", r.FormValue("port")))
		return
	}
	ln, err := listener.Listen(p.s, "tcp6", ":"+strconv.Itoa(int(port)))
	if err != nil {
		reply(w, nil, err)
		return
	}
	p.mu.Lock()
	p.echoes[uint16(port)] = echo.Serve(ln, 30*time.Second)
	p.mu.Unlock()
	reply(w, map[string]any{"addr": ln.Addr().String()}, nil)
}

func (p *probe) closeListeners() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.echoes {
		e.Close()
	}
}
