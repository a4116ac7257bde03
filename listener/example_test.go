package listener_test

import (
	"errors"
	"log"
	"net"
	"net/http"

	"github.com/teredo-go/teredo/listener"
	"github.com/teredo-go/teredo/stack"
)

// Serve HTTP on the Teredo address; the listener follows address changes.
func ExampleListen() {
	var s *stack.Stack // from stack.New
	ln, err := listener.Listen(s, "tcp6", ":80")
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("serving on http://%v", ln.Addr())
	err = http.Serve(ln, http.FileServer(http.Dir(".")))
	if errors.Is(err, net.ErrClosed) {
		return // ln was closed
	}
	log.Print(err)
}
