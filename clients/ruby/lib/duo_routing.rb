# frozen_string_literal: true

# The generated code requires its siblings as 'gitlab/duo/routing/v1/...', so this directory must be on the
# load path even when the gem is loaded by path (vendored in GitLab Rails) rather than through RubyGems.
$LOAD_PATH.unshift(__dir__) unless $LOAD_PATH.include?(__dir__)

require "duo_routing/version"
require "duo_routing/errors"
require "duo_routing/token"
require "duo_routing/completion"
require "duo_routing/client"
