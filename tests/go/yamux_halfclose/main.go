// yamux_halfclose checks what plugbay's Python yamux does with a stream hashicorp/yamux leaves half-closed.
//
//	yamux_halfclose ADDRESS
//
// Dials the unix socket ADDRESS as a yamux client, opens a stream, writes "hello" and reads what
// the peer sends until the peer's FIN (EOF), and then never closes its own side. It waits for the
// peer to reset the stream (the session then drops it: NumStreams 0), checks the session itself
// lives on (a ping is answered), prints "reset" and keeps the session until the peer closes it;
// or prints the error and exits 1. A watchdog ends it after 30 s ("error: watchdog", exit 3).
package main

import (
	"fmt"
	"io/ioutil"
	"time"

	"plugbay.test/yamuxutil"
)

func main() {
	sess := yamuxutil.DialSession("yamux_halfclose", 30*time.Second, true)
	st, err := sess.Open()
	if err != nil {
		yamuxutil.Fail(fmt.Errorf("open: %w", err))
	}
	if _, err := st.Write([]byte("hello")); err != nil {
		yamuxutil.Fail(fmt.Errorf("write: %w", err))
	}
	got, err := ioutil.ReadAll(st) // to the peer's FIN
	if err != nil {
		yamuxutil.Fail(fmt.Errorf("read to the peer's close: %w", err))
	}
	if string(got) != "hello" {
		yamuxutil.Fail(fmt.Errorf("the peer sent %q", got))
	}
	// never st.Close(): the stream stays half-closed until the peer gives up on it
	for sess.NumStreams() != 0 {
		if sess.IsClosed() {
			yamuxutil.Fail(fmt.Errorf("the session ended instead of the stream"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := sess.Ping(); err != nil {
		yamuxutil.Fail(fmt.Errorf("ping after the reset: %w", err))
	}
	fmt.Println("reset")
	<-sess.CloseChan()
}
