// Package yamuxutil holds what the yamux test programs share.
package yamuxutil

import (
	"fmt"
	"io/ioutil"
	"log"
	"net"
	"os"
	"time"

	"github.com/hashicorp/yamux"
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

// Watchdog ends the program after limit ("error: watchdog", exit 3), so a test whose peer never
// answers still sees the program end.
func Watchdog(limit time.Duration) {
	go func() { time.Sleep(limit); fmt.Println("error: watchdog"); os.Exit(3) }()
}

// QuietConfig is hashicorp/yamux's default config with its logging (and the log package's) discarded:
// the Python tests read the program's stdout, where only its verdict belongs.
func QuietConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = ioutil.Discard
	log.SetOutput(ioutil.Discard)
	return cfg
}

// DialSession is the start of a program run as "PROGRAM ADDRESS": it checks the arguments (else prints
// "usage: PROGRAM ADDRESS", exit 2), arms a watchdog of limit, dials the unix socket ADDRESS and runs a
// quiet yamux session over it, the client side if client is true, else the server side. An error is
// Fail'd.
func DialSession(program string, limit time.Duration, client bool) *yamux.Session {
	if len(os.Args) != 2 {
		fmt.Println("usage:", program, "ADDRESS")
		os.Exit(2)
	}
	Watchdog(limit)
	conn, err := net.Dial("unix", os.Args[1])
	if err != nil {
		Fail(err)
	}
	var sess *yamux.Session
	if client {
		sess, err = yamux.Client(conn, QuietConfig())
	} else {
		sess, err = yamux.Server(conn, QuietConfig())
	}
	if err != nil {
		Fail(err)
	}
	return sess
}
