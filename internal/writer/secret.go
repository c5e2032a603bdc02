package writer

import (
	"fmt"
	"os"
	"strings"
)

// Password finds a writer's password without it ever being on a command
// line: the option "password" (allowed only in the configuration file),
// else the file named by "password_file" (first line), else the client's
// usual environment variable envName (PGPASSWORD, MYSQL_PWD, REDISCLI_AUTH).
// An empty result with a nil error means no password was given.
func Password(opts map[string]string, envName string) (string, error) {
	if p, ok := opts["password"]; ok {
		return p, nil
	}
	if f := opts["password_file"]; f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("password_file: %w; give a readable file holding the password on its first line", err)
		}
		line, _, _ := strings.Cut(string(b), "\n")
		return strings.TrimRight(line, "\r"), nil
	}
	if envName != "" {
		return os.Getenv(envName), nil
	}
	return "", nil
}
