package dialer_test

import (
	"context"
	"errors"
	"log"
	"net"
	"syscall"
	"time"

	"github.com/teredo-go/teredo/dialer"
	"github.com/teredo-go/teredo/stack"
)

func ExampleDialer_DialContext() {
	var s *stack.Stack // from stack.New
	d := &dialer.Dialer{Network: s, Resolver: net.DefaultResolver}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", "ipv6.example.net:443")
	switch {
	case errors.Is(err, dialer.ErrIPv4):
		log.Print("the destination has no IPv6 address")
	case errors.Is(err, syscall.EHOSTUNREACH):
		log.Print("the Teredo peer did not answer")
	case errors.Is(err, syscall.ECONNREFUSED):
		log.Print("nothing listens there")
	case err != nil:
		log.Print(err)
	default:
		defer c.Close()
	}
}
