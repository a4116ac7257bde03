package teredotest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	teredostack "github.com/teredo-go/teredo/stack"
)

// ClientConfig returns a stack.Config for a Teredo client of this Internet:
// its server, a socket on loopback, the IPv4 filter that accepts loopback
// addresses, and Resolver for the hosts' names. Set more fields (Logger,
// Clock) on the result as needed.
func (in *Internet) ClientConfig() teredostack.Config {
	return teredostack.Config{
		Servers:    in.Servers(),
		Secondary:  in.SecondaryAddr(),
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: in.IPv4Filter(),
		Resolver:   in.Resolver(),
	}
}

// AddName makes name resolve to addrs in Resolver, as a DNS zone of the
// Internet would: typically the addresses of hosts from AddHost. Names are
// case-insensitive; adding a name again replaces its addresses.
func (in *Internet) AddName(name string, addrs ...netip.Addr) error {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" || len(addrs) == 0 {
		return fmt.Errorf("teredotest: AddName needs a name and addresses, got %q and %d", name, len(addrs))
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.names == nil {
		in.names = make(map[string][]netip.Addr)
	}
	in.names[name] = slices.Clone(addrs)
	return nil
}

// Resolver returns a resolver for the names given to AddName; it implements
// dialer.Resolver and fails other names with a not-found *net.DNSError, so
// that a test never asks the host's DNS.
func (in *Internet) Resolver() *Resolver { return &Resolver{in: in} }

// Resolver resolves the names of an Internet (see Internet.AddName).
type Resolver struct{ in *Internet }

// LookupNetIP returns the addresses of host for network "ip", "ip4" or
// "ip6", as net.Resolver.LookupNetIP does.
func (r *Resolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if err := ctx.Err(); err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: host, IsTimeout: true}
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	r.in.mu.Lock()
	all := r.in.names[name]
	r.in.mu.Unlock()
	var out []netip.Addr
	for _, a := range all {
		switch {
		case network == "ip",
			network == "ip6" && a.Is6() && !a.Is4In6(),
			network == "ip4" && (a.Is4() || a.Is4In6()):
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return out, nil
}
