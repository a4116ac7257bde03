package main

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// localAddrs is the set of this host's IPv6 addresses, for a host-specific
// relay. The set is replaced, never changed, so lookups on the packet path
// take no lock; it is refreshed periodically and, at most once a second, on
// a miss, so that a newly added address is served promptly.
type localAddrs struct {
	log     *slog.Logger
	set     atomic.Pointer[map[netip.Addr]struct{}]
	lastTry atomic.Int64
	kick    chan struct{}
}

func newLocalAddrs(log *slog.Logger) *localAddrs {
	l := &localAddrs{log: log, kick: make(chan struct{}, 1)}
	l.set.Store(&map[netip.Addr]struct{}{})
	l.load()
	return l
}

func (l *localAddrs) load() {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		l.log.Warn("listing local addresses", "err", err)
		return
	}
	m := make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		if p, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(p.IP); ok && ip.Is6() && !ip.Is4In6() {
				m[ip] = struct{}{}
			}
		}
	}
	l.set.Store(&m)
}

func (l *localAddrs) contains(a netip.Addr) bool {
	if _, ok := (*l.set.Load())[a]; ok {
		return true
	}
	now := time.Now().UnixNano()
	if last := l.lastTry.Load(); now-last > int64(time.Second) && l.lastTry.CompareAndSwap(last, now) {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	return false
}

func (l *localAddrs) refresh(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.kick:
		}
		l.load()
	}
}
