package socksd

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/teredo-go/teredo/internal/forward"
)

// forwards are the -forward ports, opened on the Teredo address once it is
// qualified (a listener there needs an address); they keep accepting
// across address changes, bound to the NIC rather than the address.
type forwards struct {
	cfg  []Forward
	t    Teredo
	dial func(ctx context.Context, network, address string) (net.Conn, error)
	log  *slog.Logger

	started bool
	running []*forward.Forwarder
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
		f.running = append(f.running, forward.New(ln, fw.Target, f.dial, f.log))
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
