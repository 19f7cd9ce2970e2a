// yamux_bench measures hashicorp/yamux stream throughput, the reference for plugbay's Python yamux:
//
//	yamux_bench sink NETWORK ADDRESS BYTES   listen, accept one connection (yamux server session),
//	                                         then for each stream the peer opens: read BYTES, reply "k"
//	yamux_bench pump NETWORK ADDRESS BYTES   dial (yamux client session), open one stream, write BYTES
//	                                         in 64 KiB writes, wait for the "k"; print {"mb_s": ...}
//
// sink prints "listening" once it listens and exits when the peer closes the session. Errors print
// "error: ..." and exit 1; a watchdog ends either mode after 60 s (exit 3).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/yamux"
	"plugbay.test/yamuxutil"
)

// fail ends the program the way the tests read an error.
var fail = yamuxutil.Fail

func config() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = ioutil.Discard
	return cfg
}

func main() {
	if len(os.Args) != 5 {
		fmt.Println("usage: yamux_bench sink|pump NETWORK ADDRESS BYTES")
		os.Exit(2)
	}
	go func() { time.Sleep(60 * time.Second); fmt.Println("error: watchdog"); os.Exit(3) }()
	mode, network, address := os.Args[1], os.Args[2], os.Args[3]
	size, err := strconv.Atoi(os.Args[4])
	if err != nil || size < 1 {
		fail(fmt.Errorf("BYTES must be a positive number, got %q", os.Args[4]))
	}
	if mode == "sink" {
		conn, err := yamuxutil.AcceptOne(network, address)
		if err != nil {
			fail(err)
		}
		sess, err := yamux.Server(conn, config())
		if err != nil {
			fail(err)
		}
		for {
			st, err := sess.Accept()
			if err != nil {
				return // the peer closed the session
			}
			if _, err := io.CopyN(ioutil.Discard, st, int64(size)); err != nil {
				fail(err)
			}
			if _, err := st.Write([]byte("k")); err != nil {
				fail(err)
			}
		}
	}
	conn, err := net.Dial(network, address)
	if err != nil {
		fail(err)
	}
	sess, err := yamux.Client(conn, config())
	if err != nil {
		fail(err)
	}
	st, err := sess.Open()
	if err != nil {
		fail(err)
	}
	chunk := make([]byte, 64*1024)
	started := time.Now()
	for left := size; left > 0; left -= len(chunk) {
		n := len(chunk)
		if left < n {
			n = left
		}
		if _, err := st.Write(chunk[:n]); err != nil {
			fail(err)
		}
	}
	reply := make([]byte, 1)
	if _, err := io.ReadFull(st, reply); err != nil {
		fail(err)
	}
	took := time.Since(started)
	out, _ := json.Marshal(map[string]float64{"mb_s": float64(size) / took.Seconds() / 1e6})
	fmt.Println(string(out))
	st.Close()
	sess.Close()
}
