package stack_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/server"
	"github.com/teredo-go/teredo/stack"
)

// A Teredo host in a dozen lines: qualify, listen, dial.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := stack.New(ctx, stack.Config{Servers: []netip.Addr{netip.MustParseAddr("192.0.2.1")}})
	if err != nil {
		log.Fatal(err) // e.g. "stack: not qualified: no reply from Teredo server 192.0.2.1: context deadline exceeded"
	}
	defer s.Close()
	log.Printf("my IPv6 address: %v", s.Addr())

	ln, err := listener.Listen(s, "tcp6", ":8080") // reachable at [s.Addr()]:8080
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	c, err := dialer.New(s).DialContext(ctx, "tcp", "ipv6.example.net:80") // AAAA through the host's resolver
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

// Two Teredo hosts qualify with an in-process server on loopback and talk
// over TCP, directly to each other.
func Example_loopback() {
	srv, err := server.New(server.Config{
		Primary:    netip.MustParseAddr("127.0.0.2"),
		Secondary:  netip.MustParseAddr("127.0.0.3"),
		Port:       33544,
		IPv4Filter: proto.AnyIPv4, // loopback is not global unicast
	})
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(context.Background())
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := stack.Config{
		Servers:    []netip.Addr{netip.MustParseAddr("127.0.0.2")},
		ServerPort: 33544,
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter: proto.AnyIPv4,
	}
	alice, err := stack.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer alice.Close()
	bob, err := stack.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer bob.Close()

	ln, err := listener.Listen(bob, "tcp6", ":7")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.WriteString(c, "hello from bob")
		c.Close()
	}()

	c, err := dialer.New(alice).DialContext(ctx, "tcp", netip.AddrPortFrom(bob.Addr(), 7).String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	msg, _ := io.ReadAll(c)
	fmt.Println(proto.IsTeredo(alice.Addr()), proto.IsTeredo(bob.Addr()))
	fmt.Println(string(msg))
	// Output:
	// true true
	// hello from bob
}
