// Package yamuxutil holds what the yamux test programs share.
package yamuxutil

import (
	"fmt"
	"net"
	"os"
)

// AcceptOne listens on NETWORK ADDRESS, prints "listening" (the test's cue to dial), and returns the
// one connection it accepts; the listener is closed either way.
func AcceptOne(network, address string) (net.Conn, error) {
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	fmt.Println("listening")
	return ln.Accept()
}

// Fail prints "error: ERR" (what the Python tests read) and exits 1.
func Fail(err error) {
	fmt.Println("error:", err)
	os.Exit(1)
}
