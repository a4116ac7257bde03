package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/teredo-go/teredo/client"
)

// ErrNotQualified is the error of Dial and Listen through a stack that has
// no Teredo address (yet, or any more): Start returned before
// qualification, or every server stopped answering. It matches
// syscall.ENETUNREACH with errors.Is, as a kernel socket without a route
// would fail.
var ErrNotQualified error = notQualifiedError{}

type notQualifiedError struct{}

func (notQualifiedError) Error() string { return "teredo: not qualified (no Teredo address)" }

func (notQualifiedError) Is(target error) bool { return target == syscall.ENETUNREACH }

// resolveTimeout bounds one name's lookup.
const resolveTimeout = 10 * time.Second

// New starts the stack (see Start) and waits until it is qualified. When
// ctx ends first, it closes the stack and returns why qualification
// failed.
func New(ctx context.Context, cfg Config) (*Stack, error) {
	s, err := Start(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-s.qualified:
		return s, nil
	case <-ctx.Done():
	}
	reason := s.lastError()
	srv := s.cl.Status().Server
	s.Close()
	switch {
	case reason == nil && srv.IsValid():
		reason = fmt.Errorf("no reply from Teredo server %v", srv)
	case reason == nil:
		reason = fmt.Errorf("no reply from Teredo server %s", s.serverList())
	}
	return nil, fmt.Errorf("stack: not qualified: %w: %w", reason, ctx.Err())
}

// Ready returns nil while the stack has a Teredo address to dial and
// listen from, ErrNotQualified while it has none, and net.ErrClosed after
// Close. Packages dialer and listener check it first.
func (s *Stack) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return net.ErrClosed
	case !s.ready:
		return ErrNotQualified
	}
	return nil
}

// Qualified returns a channel closed once the stack first qualifies.
func (s *Stack) Qualified() <-chan struct{} { return s.qualified }

// setQualified and setOffline run on the event goroutine.
func (s *Stack) setQualified(ev client.Qualified) {
	s.mu.Lock()
	s.lastErr = nil
	s.ready = true // after setAddr: the address is in the netstack
	s.mu.Unlock()
	s.log.Info("teredo: qualified", "addr", ev.Addr, "server", ev.Server, "mapped", ev.Mapped)
	s.qualOnce.Do(func() { close(s.qualified) })
}

func (s *Stack) setOffline(reason error) {
	if reason == nil {
		reason = client.ErrNoReply
	}
	s.mu.Lock()
	s.ready = false
	if !errors.Is(reason, client.ErrNoServer) || s.lastErr == nil {
		s.lastErr = reason
	}
	s.mu.Unlock()
	if errors.Is(reason, client.ErrNoServer) {
		// Waiting for the first server name to resolve, which says
		// itself whether it failed.
		s.log.Debug("teredo: offline", "reason", reason)
		return
	}
	s.log.Warn("teredo: offline", "reason", reason)
}

func (s *Stack) lastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

func (s *Stack) serverList() string {
	all := make([]string, 0, len(s.cfg.Servers)+len(s.cfg.ServerNames))
	for _, a := range s.cfg.Servers {
		all = append(all, a.String())
	}
	return fmt.Sprint(append(all, s.cfg.ServerNames...))
}

// ServerName returns the entry of Config.ServerNames that server address a
// was resolved from, or "" if a came from Config.Servers or an IP literal.
func (s *Stack) ServerName(a netip.Addr) string {
	if s.names == nil {
		return ""
	}
	s.names.mu.Lock()
	defer s.names.mu.Unlock()
	return s.names.byAddr[a]
}

// nameResolver resolves Config.ServerNames when the stack starts and each
// time the client backs off, and hands the client the new list.
type nameResolver struct {
	kick   chan struct{} // buffered: a resolution is wanted
	done   chan struct{} // closed when the goroutine ends
	cancel context.CancelFunc
	ctx    context.Context

	mu     sync.Mutex
	byAddr map[netip.Addr]string
}

// initNames returns the servers the client starts with: Config.Servers
// and the ServerNames that are IPv4 literals, which need no lookup.
func (s *Stack) initNames() ([]netip.Addr, error) {
	servers := slices.Clone(s.cfg.Servers)
	if len(s.cfg.ServerNames) == 0 {
		return servers, nil
	}
	if s.cfg.Resolver == nil {
		s.cfg.Resolver = net.DefaultResolver
	}
	for _, n := range s.cfg.ServerNames {
		a, err := netip.ParseAddr(n)
		switch {
		case err != nil: // a name, resolved later
		case !a.Unmap().Is4() || !s.cfg.IPv4Filter(a.Unmap()):
			// A literal cannot get better with time: refuse it now.
			return nil, fmt.Errorf("stack: server %s is not a global unicast IPv4 address", n)
		case !slices.Contains(servers, a.Unmap()):
			servers = append(servers, a.Unmap())
		}
	}
	s.names = &nameResolver{
		kick:   make(chan struct{}, 1),
		done:   make(chan struct{}),
		byAddr: map[netip.Addr]string{},
	}
	return servers, nil
}

// startResolver starts the goroutine that resolves the names, once the
// stack is built: a Start that fails before has nothing to stop.
func (s *Stack) startResolver() {
	if s.names == nil {
		return
	}
	s.names.ctx, s.names.cancel = context.WithCancel(context.Background())
	s.onBackoff(0)
	go s.resolveLoop()
}

func (s *Stack) stopResolver() {
	if s.names == nil || s.names.cancel == nil {
		return
	}
	s.names.cancel()
	<-s.names.done
}

// onBackoff is client.Config.OnBackoff: resolve the names again before the
// next cycle.
func (s *Stack) onBackoff(time.Duration) {
	if s.names == nil {
		return
	}
	select {
	case s.names.kick <- struct{}{}:
	default:
	}
}

func (s *Stack) resolveLoop() {
	r := s.names
	defer close(r.done)
	for {
		select {
		case <-r.kick:
		case <-r.ctx.Done():
			return
		}
		servers, err := s.resolveServers(r.ctx)
		if r.ctx.Err() != nil {
			return
		}
		if len(servers) == 0 {
			err = fmt.Errorf("no Teredo server address: %w", err)
			s.mu.Lock()
			if !s.addr.IsValid() || s.lastErr != nil {
				s.lastErr = err
			}
			s.mu.Unlock()
			s.log.Warn("teredo: no server name resolved", "names", s.cfg.ServerNames, "err", err)
			continue
		}
		if err != nil {
			s.log.Warn("teredo: skipping Teredo servers that do not resolve", "err", err)
		}
		if err := s.cl.SetServers(servers); err != nil {
			s.log.Error("teredo: server list", "err", err)
		}
	}
}

// resolveServers returns Config.Servers followed by one IPv4 address per
// server name, in order: the client derives each server's secondary
// address from its primary. err gathers the names that gave nothing.
func (s *Stack) resolveServers(ctx context.Context) ([]netip.Addr, error) {
	servers := slices.Clone(s.cfg.Servers)
	names := map[netip.Addr]string{}
	var errs []error
	for _, n := range s.cfg.ServerNames {
		var found []netip.Addr
		if a, err := netip.ParseAddr(n); err == nil {
			found = []netip.Addr{a}
		} else {
			lctx, cancel := context.WithTimeout(ctx, resolveTimeout)
			found, err = s.cfg.Resolver.LookupNetIP(lctx, "ip4", n)
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("resolve %s: %w", n, err))
				continue
			}
		}
		i := slices.IndexFunc(found, func(a netip.Addr) bool { return a.Unmap().Is4() })
		switch {
		case i < 0:
			errs = append(errs, fmt.Errorf("%s: no IPv4 address", n))
			continue
		case !s.cfg.IPv4Filter(found[i].Unmap()):
			errs = append(errs, fmt.Errorf("%s: %v is not a global IPv4 address", n, found[i].Unmap()))
			continue
		}
		a := found[i].Unmap()
		if slices.Contains(servers, a) {
			continue
		}
		servers = append(servers, a)
		if a.String() != n {
			names[a] = n
		}
	}
	s.names.mu.Lock()
	s.names.byAddr = names
	s.names.mu.Unlock()
	return servers, errors.Join(errs...)
}
