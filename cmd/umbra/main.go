package main
import (
 _ "modernc.org/sqlite"
 _ "golang.org/x/sys/unix"
 _ "github.com/spf13/cobra"
 _ "github.com/BurntSushi/toml"
 _ "github.com/google/go-cmp/cmp"
)
func main(){}
