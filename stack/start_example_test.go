package stack_test

import (
	"fmt"
	"log"
	"net/netip"
	"time"

	"github.com/teredo-go/teredo/proto"
	"github.com/teredo-go/teredo/stack"
	"github.com/teredo-go/teredo/teredotest"
)

// Start returns before qualification, which goes on in the background for
// as long as it takes; dials fail at once until then.
func ExampleStart() {
	in, err := teredotest.Start()
	if err != nil {
		log.Fatal(err)
	}
	defer in.Close()
	s, err := stack.Start(stack.Config{
		ServerNames: []string{in.ServerAddr().String()}, // names are resolved again before each round
		Secondary:   in.SecondaryAddr(),
		LocalAddr:   netip.MustParseAddrPort("127.0.0.1:0"),
		IPv4Filter:  in.IPv4Filter(),
	})
	if err != nil {
		log.Fatal(err) // only local trouble: a bad Config, no socket
	}
	defer s.Close()
	// Until it is qualified, dials fail at once with ErrNotQualified,
	// which matches syscall.ENETUNREACH; a program may dial meanwhile.
	select {
	case <-s.Qualified():
	case <-time.After(30 * time.Second):
		log.Fatal(s.Status().LastError)
	}
	fmt.Println("qualified:", s.Ready() == nil, proto.IsTeredo(s.Addr()))
	// Output: qualified: true true
}
