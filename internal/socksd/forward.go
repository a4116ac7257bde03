package socksd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// maxForwardConns bounds the connections one -forward relays at once, so a
// flood over IPv6 cannot exhaust the host's descriptors.
const maxForwardConns = 256

// forwarder accepts TCP connections on a port of the Teredo address and
// relays each to a target reached through the host (-forward).
type forwarder struct {
	ln     net.Listener
	target string
	dial   func(ctx context.Context, network, address string) (net.Conn, error)
	log    *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{}

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newForwarder(ln net.Listener, target string, dial func(ctx context.Context, network, address string) (net.Conn, error), log *slog.Logger) *forwarder {
	ctx, cancel := context.WithCancel(context.Background())
	f := &forwarder{ln: ln, target: target, dial: dial, log: log, ctx: ctx, cancel: cancel,
		sem: make(chan struct{}, maxForwardConns), conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	return f
}

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if f.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient accept error (or a stack that reports one per
			// reset): pause instead of spinning.
			f.log.Debug("forward: accept failed", "err", err)
			select {
			case <-time.After(50 * time.Millisecond):
				continue
			case <-f.ctx.Done():
				return
			}
		}
		select {
		case f.sem <- struct{}{}:
		default:
			f.log.Warn("forward: too many connections; refusing one", "from", c.RemoteAddr(), "target", f.target)
			c.Close()
			continue
		}
		f.wg.Add(1)
		go f.relay(c)
	}
}

// track registers c so Close can cut it; it reports false once closing.
func (f *forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *forwarder) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
}

func (f *forwarder) relay(in net.Conn) {
	defer f.wg.Done()
	defer func() { <-f.sem }()
	defer in.Close()
	if !f.track(in) {
		return
	}
	defer f.untrack(in)
	ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
	out, err := f.dial(ctx, "tcp", f.target)
	cancel()
	if err != nil {
		f.log.Warn("forward: cannot reach target", "target", f.target, "from", in.RemoteAddr(), "err", err)
		return
	}
	defer out.Close()
	if !f.track(out) {
		return
	}
	defer f.untrack(out)
	f.log.Debug("forward: relaying", "from", in.RemoteAddr(), "target", f.target)
	splice(in, out)
}

// Close stops accepting, cuts every relayed connection and waits for the
// goroutines to end.
func (f *forwarder) Close() error {
	f.cancel()
	err := f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
	return err
}

// forwards are the -forward ports, opened on the Teredo address once it is
// qualified (a listener there needs an address); they keep accepting
// across address changes, bound to the NIC rather than the address.
type forwards struct {
	cfg  []Forward
	t    Teredo
	dial func(ctx context.Context, network, address string) (net.Conn, error)
	log  *slog.Logger

	started bool
	running []*forwarder
}

// start opens the ports, once, and returns the lines that tell the user;
// addr is the Teredo address, public the one a gateway maps it to, if any.
func (f *forwards) start(addr, public netip.Addr) []string {
	if f.started {
		return nil
	}
	f.started = true
	var lines []string
	for _, fw := range f.cfg {
		ln, err := f.t.Listen(fw.Port)
		if err != nil {
			lines = append(lines, fmt.Sprintf("-forward %d=%s: cannot listen on the Teredo address: %v", fw.Port, fw.Target, err))
			continue
		}
		f.running = append(f.running, newForwarder(ln, fw.Target, f.dial, f.log))
		lines = append(lines, fmt.Sprintf("forwarding [%s]:%d to %s", addr, fw.Port, fw.Target))
		if public.IsValid() {
			lines = append(lines, fmt.Sprintf("forwarding [%s]:%d to %s", public, fw.Port, fw.Target))
		}
	}
	return lines
}

func (f *forwards) close() {
	for _, fw := range f.running {
		fw.Close()
	}
}

// splice copies both ways until both directions are done, passing a
// half-close on where the connections support it.
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	half := func(dst, src net.Conn) {
		defer wg.Done()
		_, err := io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
			cw.CloseWrite()
			return
		}
		// No half-close, or an error: end both directions.
		dst.Close()
		src.Close()
	}
	go half(a, b)
	go half(b, a)
	wg.Wait()
}
